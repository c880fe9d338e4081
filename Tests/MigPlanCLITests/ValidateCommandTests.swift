import ArgumentParser
import Foundation
import MigPlanGraph
import MigPlanModel
import Testing
@testable import MigPlanCLI

@Suite struct ValidateCommandTests {
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var plans: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: repoRoot + "/plans")) ?? [])
            .filter { $0.hasSuffix(".yaml") }.sorted().map { repoRoot + "/plans/" + $0 }
    }

    @Test func parsesFilesFormatAndCheckFiles() throws {
        let command = try ValidateCommand.parse(["--format", "json", "--check-files", "a.yaml", "b.yaml"])
        #expect(command.plans == ["a.yaml", "b.yaml"])
        #expect(command.format == .json)
        #expect(command.checkFiles)
    }

    @Test func noPlanIsAUsageError() {
        #expect(throws: (any Error).self) { try ValidateCommand.parse([]) }
        let message = MigPlanCommand.message(for: ValidationError("x"))
        #expect(!message.isEmpty)
    }

    @Test func unknownFormatIsAUsageError() {
        #expect(throws: (any Error).self) { try ValidateCommand.parse(["--format", "xml", "a.yaml"]) }
    }

    @Test func helpTeachesExamplesAndExitStatuses() {
        let help = ValidateCommand.helpMessage()
        #expect(help.contains("migplan validate plans/*.yaml"))
        #expect(help.contains("Exit status: 0"))
        #expect(help.contains("--check-files"))
        #expect(help.contains("FILE:LINE:COLUMN: error: FIELD.PATH: message"))
    }

    @Test func realCatalogComesFromLibssh2AndContainsTheDefaults() {
        let catalog = SupportedAlgorithms.catalog
        #expect(catalog.source.hasPrefix("libssh2 "))
        #expect(catalog.contains("aes256-ctr", kind: .cipher))
        #expect(catalog.contains("diffie-hellman-group-exchange-sha256", kind: .kex))
        #expect(catalog.contains("hmac-sha2-256", kind: .mac))
        #expect(catalog.contains("ssh-ed25519", kind: .hostKey))
        #expect(!catalog.contains("ssh-ed25519", kind: .cipher))
    }

    @Test func shippedPlansAreValidWithTheRealCatalog() {
        let reports = ValidateRunner(catalog: SupportedAlgorithms.catalog, checkFiles: false).run(Self.plans)
        #expect(reports.count >= 4)
        for report in reports { #expect(report.isValid, "\(report.file): \(report.diagnostics.map(\.description))") }
    }

    @Test func textOutputHasOneLinePerDiagnosticAndASummary() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-validate-\(UUID().uuidString).yaml").path
        try Data("apiVersion: migplan/v1\nname: x\nbogus: 1\n".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let reports = ValidateRunner(catalog: .libssh2_1_10, checkFiles: false).run([path])
        let text = ValidateOutput.text(reports)
        #expect(text.contains("\(path):3:1: error: bogus: unknown field \"bogus\""))
        #expect(text.contains("\(path):1:1: error: missing required field \"ssh\""))
        #expect(text.hasSuffix("\(path): INVALID (6 errors, 0 warnings)\n"))
    }

    @Test func jsonOutputIsVersionedAndCarriesEveryDiagnosticField() throws {
        let reports = ValidateRunner(catalog: .libssh2_1_10, checkFiles: false).run(Self.plans + ["/nonexistent/plan.yaml"])
        let json = try ValidateOutput.json(reports)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["formatVersion"] as? Int == 1)
        #expect(object["valid"] as? Bool == false)
        let diagnostics = try #require(object["diagnostics"] as? [[String: Any]])
        let missing = try #require(diagnostics.first { $0["file"] as? String == "/nonexistent/plan.yaml" })
        #expect(Set(missing.keys) == ["file", "line", "column", "severity", "path", "message"])
        #expect(missing["severity"] as? String == "error")
        let files = try #require(object["files"] as? [[String: Any]])
        #expect(files.count == Self.plans.count + 1)
    }

    static let twoMigrations = """
        apiVersion: migplan/v1
        name: two
        ssh:
          knownHosts: known_hosts
        keys:
          k:
            path: id_ed25519
        hosts:
          h1: {address: 10.0.0.1, key: k}
          h2: {address: 10.0.0.2, key: k}
        containers:
          a: {runtime: runc, stateful: true}
          b: {runtime: runc, stateful: true}
        migrations:
          - name: m1
            containers: [a]
            from: h1
            to: h2
          - name: a
            containers: [b]
            from: h1
            to: h2

        """

    /// A compiler that fails like two colliding migrations do: once the plan has 2 migrations.
    static let collidingCompiler: ValidateRunner.Compile = { plan throws(GraphError) in
        if plan.migrations.count >= 2 { throw .duplicateStep("a.archive@h1") }
    }

    @Test func aPlanTheCompilerRejectsIsInvalidWithAnErrorAtTheCollidingMigration() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-validate-\(UUID().uuidString).yaml").path
        try Data(Self.twoMigrations.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var runner = ValidateRunner(catalog: .libssh2_1_10, checkFiles: false)
        runner.compile = Self.collidingCompiler
        let reports = runner.run([path])
        #expect(reports.count == 1)
        #expect(reports[0].isValid == false)
        let text = ValidateOutput.text(reports)
        #expect(text.contains("\(path):19:5: error: migrations[1]: the plan cannot be compiled into a step graph: two steps have the id a.archive@h1; rename"), "\(text)")
        #expect(text.hasSuffix("\(path): INVALID (1 error, 0 warnings, 2 file checks skipped)\n"), "\(text)")

        let json = try ValidateOutput.json(reports)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == false)
        let diagnostics = try #require(object["diagnostics"] as? [[String: Any]])
        let compile = try #require(diagnostics.first { $0["severity"] as? String == "error" })
        #expect(compile["file"] as? String == path)
        #expect(compile["line"] as? Int == 19)
        #expect(compile["column"] as? Int == 5)
        #expect(compile["path"] as? String == "migrations[1]")
        #expect((compile["message"] as? String)?.contains("two steps have the id a.archive@h1") == true)
    }

    @Test func aCompilerFailureInTheFirstMigrationIsReportedThere() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-validate-\(UUID().uuidString).yaml").path
        try Data(Self.twoMigrations.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var runner = ValidateRunner(catalog: .libssh2_1_10, checkFiles: false)
        runner.compile = { _ throws(GraphError) in throw .cycle(["x.a@h1", "x.a@h1"]) }
        let reports = runner.run([path])
        let text = ValidateOutput.text(reports)
        #expect(text.contains("\(path):15:5: error: migrations[0]: the plan cannot be compiled"), "\(text)")
    }

    @Test func invalidPlansAreNotCompiled() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-validate-\(UUID().uuidString).yaml").path
        try Data(Self.twoMigrations.replacingOccurrences(of: "to: h2\n  - name: a", with: "to: h9\n  - name: a").utf8)
            .write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var runner = ValidateRunner(catalog: .libssh2_1_10, checkFiles: false)
        runner.compile = { _ throws(GraphError) in Issue.record("an invalid plan was compiled") }
        let reports = runner.run([path])
        #expect(reports[0].diagnostics.filter { $0.severity == .error }.map(\.path) == ["migrations[0].to"])
    }

    @Test func theRealCompilerAcceptsEveryShippedPlan() {
        let runner = ValidateRunner(catalog: SupportedAlgorithms.catalog, checkFiles: false)
        for plan in Self.plans {
            let report = runner.run([plan])[0]
            #expect(!report.diagnostics.contains { $0.message.contains("cannot be compiled") }, "\(report.diagnostics)")
        }
    }
}
