import Foundation
import Testing
@testable import MigPlanModel

/// Every fixture declares its verdict (`# expect: valid | schema-invalid | semantic-invalid`) and, at
/// its end, every error and warning it must produce (`# diag: error 16:10 hosts.b.key`): exact
/// positions, all of them, nothing more.
@Suite struct FixtureTests {
    struct Expectation {
        var verdict: String
        var diagnostics: [String]
    }

    static func expectation(of text: String) -> Expectation {
        var verdict = ""
        var diagnostics: [String] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# expect: ") { verdict = String(line.dropFirst("# expect: ".count)) }
            if line.hasPrefix("# diag: ") { diagnostics.append(String(line.dropFirst("# diag: ".count))) }
        }
        return Expectation(verdict: verdict, diagnostics: diagnostics)
    }

    @Test func thereAreAtLeastTwentyFixturesCoveringEachVerdict() throws {
        let names = try TestSupport.fixtureNames()
        #expect(names.count >= 20)
        for prefix in ["valid-", "schema-", "semantic-"] {
            #expect(names.filter { $0.hasPrefix(prefix) }.count >= 5, "too few \(prefix) fixtures")
        }
    }

    @Test(arguments: try TestSupport.fixtureNames())
    func fixtureProducesExactlyItsDeclaredDiagnostics(name: String) throws {
        let path = TestSupport.fixturesDirectory + "/" + name
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let expected = Self.expectation(of: text)
        #expect(["valid", "schema-invalid", "semantic-invalid"].contains(expected.verdict), "\(name) lacks # expect:")
        let report = PlanValidator(fileChecks: .never).check(file: path, options: TestSupport.options)
        #expect(TestSupport.summary(report.diagnostics) == expected.diagnostics,
                "\(name):\n\(report.diagnostics.map(\.description).joined(separator: "\n"))")
        #expect(report.isValid == (expected.verdict == "valid"), "\(name): verdict")
        if expected.verdict != "valid" { #expect(!expected.diagnostics.isEmpty) }
    }

    @Test func everyPlanInPlansDirectoryIsValidAndCarriesTheSchemaModeline() throws {
        let directory = TestSupport.repoRoot + "/plans"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }
        #expect(Set(names).isSuperset(of: ["clock-stateless.yaml", "face-stateful.yaml", "face-multiuser.yaml", "memhog-docker.yaml"]))
        for name in names {
            let path = directory + "/" + name
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text.hasPrefix("# yaml-language-server: $schema=../schemas/migplan-v1.schema.json\n"), "\(name)")
            let report = PlanValidator(fileChecks: .never).check(file: path)
            #expect(report.isValid, "\(name): \(report.diagnostics.map(\.description))")
            #expect(report.diagnostics.filter { $0.severity == .warning }.isEmpty, "\(name) has warnings")
        }
    }

    @Test func faceMultiuserPlanDecodesToTheLabContract() throws {
        let plan = try PlanLoader.loadValid(file: TestSupport.repoRoot + "/plans/face-multiuser.yaml")
        #expect(plan.hosts.map(\.address) == ["10.77.0.11", "10.77.0.12"])
        #expect(plan.ssh.knownHosts == TestSupport.repoRoot + "/.lab/known_hosts")
        #expect(plan.keys.first?.path == TestSupport.repoRoot + "/.lab/keys/controller_ed25519")
        #expect(plan.journal?.sslrootcert == TestSupport.repoRoot + "/.lab/pg/ca.crt")
        #expect(plan.journal?.passwordEnv == "MIGPLAN_JOURNAL_PASSWORD")
        #expect(plan.journal?.port == 5433)
        #expect(plan.journal?.sslmode == .verifyFull)
        let migration = try #require(plan.migrations.first)
        #expect(migration.flow == .stateful)
        #expect(migration.transfer == TransferOptions(compression: .zlib(level: 1), archive: .single, path: .relay,
                                                      marks: migration.transfer.marks))
        #expect(plan.instanceNames(of: migration) == ["face-1", "face-2", "face-3", "face-4"])
    }
}
