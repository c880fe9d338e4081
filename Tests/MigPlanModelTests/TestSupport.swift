import Foundation
@testable import MigPlanModel

/// Shared helpers for the model tests.
enum TestSupport {
    /// The repository root (this file is Tests/MigPlanModelTests/TestSupport.swift).
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var fixturesDirectory: String {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
    }

    static func fixtureNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: fixturesDirectory)
            .filter { $0.hasSuffix(".yaml") }
            .sorted()
    }

    /// A fixed environment so `${VAR}` and `~` give the same result everywhere.
    static let environment = ["LAB": "/lab", "HOME": "/home/tester"]

    static var options: PlanLoadOptions { PlanLoadOptions(environment: environment) }

    /// Loads and validates plan text (no file checks, libssh2 1.10 catalog).
    static func check(_ text: String, file: String = "plan.yaml", directory: String = "/plans",
                      options: PlanLoadOptions = TestSupport.options) -> (plan: Plan?, diagnostics: [Diagnostic]) {
        let loaded = PlanLoader.load(contents: Array(text.utf8), file: file, directory: directory, options: options)
        var diagnostics = loaded.diagnostics
        if let plan = loaded.plan { diagnostics += PlanValidator(fileChecks: .never).validate(plan) }
        return (loaded.plan, diagnostics.sortedForOutput())
    }

    /// `severity line:column path` of the errors and warnings.
    static func summary(_ diagnostics: [Diagnostic]) -> [String] {
        diagnostics.filter { $0.severity != .note }.map {
            "\($0.severity.rawValue) \($0.line):\($0.column) \($0.path)".trimmingCharacters(in: .whitespaces)
        }
    }

    /// A small valid plan; tests replace parts of it.
    static let basePlan = """
        apiVersion: migplan/v1
        name: base
        ssh:
          knownHosts: known_hosts
        keys:
          ops:
            path: id_ed25519
        hosts:
          a:
            address: 10.0.0.1
            key: ops
          b:
            address: 10.0.0.2
            key: ops
        containers:
          web:
            runtime: runc
            stateful: true
        migrations:
          - name: move
            containers: [web]
            from: a
            to: b

        """
}
