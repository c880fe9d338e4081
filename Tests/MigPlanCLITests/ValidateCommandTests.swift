import ArgumentParser
import Foundation
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
}
