import Foundation
import Testing
@testable import MigPlanModel

/// The Swift validator and the JSON Schema (run by Python's `jsonschema` on each fixture converted
/// to JSON by PyYAML) must agree on every fixture.
///
/// The split: `valid-*` and `schema-*` fixtures are schema-level: both validators must give the
/// same verdict. `semantic-*` fixtures break rules the schema cannot express (references between
/// sections, duplicate names, unknown or weak algorithms, unset variables, YAML duplicate keys
/// which PyYAML silently accepts): the schema must accept them and the Swift validator reject them.
@Suite struct SchemaAgreementTests {
    static let script = #"""
    import json, sys
    try:
        import jsonschema, yaml
    except ImportError as error:
        print("MISSING " + str(error)); sys.exit(3)
    schema = json.load(open(sys.argv[1]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    verdicts = {}
    for path in sys.argv[2:]:
        try:
            document = json.loads(json.dumps(yaml.safe_load(open(path)), default=str))
            errors = [e.message for e in validator.iter_errors(document)]
        except yaml.YAMLError as error:
            errors = ["YAML: " + str(error)]
        verdicts[path] = errors
    print(json.dumps(verdicts))
    """#

    /// path → schema errors (empty = valid).
    static func schemaVerdicts(_ paths: [String]) throws -> [String: [String]] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, TestSupport.repoRoot + "/schemas/migplan-v1.schema.json"] + paths
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        if process.terminationStatus == 3 || text.hasPrefix("MISSING") {
            Issue.record("Python's jsonschema (and PyYAML) are needed: pip install jsonschema pyyaml (\(text))")
            return [:]
        }
        #expect(process.terminationStatus == 0, "python3 failed: \(text)")
        return try JSONDecoder().decode([String: [String]].self, from: data)
    }

    @Test func swiftValidatorAndJSONSchemaAgreeOnEveryFixtureAndPlan() throws {
        let fixtures = try TestSupport.fixtureNames().map { TestSupport.fixturesDirectory + "/" + $0 }
        let plans = try FileManager.default.contentsOfDirectory(atPath: TestSupport.repoRoot + "/plans")
            .filter { $0.hasSuffix(".yaml") }.map { TestSupport.repoRoot + "/plans/" + $0 }
        let verdicts = try Self.schemaVerdicts(fixtures + plans)
        guard !verdicts.isEmpty else { return }
        for path in fixtures + plans {
            let name = (path as NSString).lastPathComponent
            let schemaErrors = try #require(verdicts[path], "no verdict for \(name)")
            let swift = PlanValidator(fileChecks: .never).check(file: path, options: TestSupport.options)
            if name.hasPrefix("semantic-") {
                #expect(schemaErrors.isEmpty, "\(name): semantic fixtures must pass the schema: \(schemaErrors)")
                #expect(!swift.isValid, "\(name): the Swift validator must reject it")
            } else {
                #expect(schemaErrors.isEmpty == swift.isValid,
                        "\(name): schema says \(schemaErrors.isEmpty ? "valid" : "invalid \(schemaErrors)"), Swift says \(swift.isValid ? "valid" : "invalid \(swift.diagnostics.map(\.description))")")
            }
        }
    }

    @Test func schemaDescribesEveryPropertyAndForbidsUnknownOnes() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestSupport.repoRoot + "/schemas/migplan-v1.schema.json"))
        let schema = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        var objects = 0
        func walk(_ node: Any, _ path: String) {
            if let dictionary = node as? [String: Any] {
                if let properties = dictionary["properties"] as? [String: Any], dictionary["type"] as? String == "object" {
                    objects += 1
                    #expect(dictionary["additionalProperties"] as? Bool == false, "\(path) allows unknown fields")
                    for (name, property) in properties {
                        let described = (property as? [String: Any])?["description"] is String
                        #expect(described, "\(path).\(name) has no description")
                    }
                }
                for (key, value) in dictionary { walk(value, path + "/" + key) }
            } else if let array = node as? [Any] {
                for (index, value) in array.enumerated() { walk(value, "\(path)[\(index)]") }
            }
        }
        walk(schema, "#")
        #expect(objects >= 10)
    }
}
