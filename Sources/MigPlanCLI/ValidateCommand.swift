import ArgumentParser
import Foundation
import MigPlanGraph
import MigPlanModel

/// `migplan validate PLAN...`: schema, semantic and local-file checks, without connecting anywhere.
struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check plan files without connecting anywhere.",
        discussion: """
        Every plan is checked against the plan format (docs/plan-format.md, \
        schemas/migplan-v1.schema.json) and for semantic mistakes: unknown host, key or container \
        references, duplicate names, a migration whose source is its destination, a container in \
        two migrations, SSH algorithm names libssh2 does not know, weak algorithms (refused unless \
        ssh.allowWeakAlgorithms: true), a stateful move on a host that cannot checkpoint. A plan \
        without such problems is then compiled into its step graph (as `migplan plan` does); a \
        compile failure (e.g. two steps or host paths colliding) is reported at the migration \
        concerned. All problems of a file are reported, each as

          FILE:LINE:COLUMN: error: FIELD.PATH: message

        Warnings (e.g. journal sslmode weaker than verify-ca) do not make a plan invalid.

        The controller's local files (key files: present, readable, mode 0600; known_hosts: an \
        entry for every host; the journal's CA certificate) are checked when they exist; files \
        that are missing here (a CI runner has no keys) are listed as skipped notes. \
        --check-files makes those checks mandatory.

        Examples:
          migplan validate plans/*.yaml
          migplan validate --check-files plans/face-multiuser.yaml
          migplan validate --format json plans/*.yaml > diagnostics.json

        Exit status: 0 every plan is valid (warnings allowed), 1 at least one plan is invalid, \
        2 usage error (no plan given, unknown option).
        """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @Argument(help: ArgumentHelp("Plan files (YAML).", valueName: "plan"))
    var plans: [String] = []

    @Option(name: .long, help: "Output format: text or json (file, line, column, severity, path, message).")
    var format: Format = .text

    @Flag(name: .long, help: "Require the local key, known_hosts and CA files to exist and pass their checks.")
    var checkFiles = false

    func validate() throws {
        if plans.isEmpty { throw ValidationError("Give at least one plan file, e.g. migplan validate plans/*.yaml") }
    }

    func run() throws {
        let reports = ValidateRunner(catalog: SupportedAlgorithms.catalog, checkFiles: checkFiles).run(plans)
        switch format {
        case .text: print(ValidateOutput.text(reports), terminator: "")
        case .json: print(try ValidateOutput.json(reports))
        }
        if reports.contains(where: { !$0.isValid }) { throw ExitCode(MigPlanExit.failure) }
    }
}

/// Runs the validator over files (separate from the command so tests call it directly).
struct ValidateRunner {
    /// Compiles a plan into its step graph; the graph itself is not needed, only whether it compiles.
    typealias Compile = @Sendable (Plan) throws(GraphError) -> Void

    var catalog: AlgorithmCatalog
    var checkFiles: Bool
    var options = PlanLoadOptions()
    /// The compiler run on plans without errors (tests inject failures).
    var compile: Compile = { plan throws(GraphError) in _ = try PlanCompiler.compile(plan) }

    func run(_ files: [String]) -> [ValidationReport] {
        let validator = PlanValidator(catalog: catalog, fileChecks: checkFiles ? .always : .whenPresent)
        return files.map { file in
            var report = validator.check(file: file, options: options)
            if report.isValid, let plan = report.plan, let diagnostic = compileDiagnostic(plan) {
                report.diagnostics = (report.diagnostics + [diagnostic]).sortedForOutput()
            }
            return report
        }
    }

    /// Compiles `plan`; on a `GraphError`, a diagnostic at the migration that makes it fail: the
    /// first N such that migrations[0...N-1] compile and migrations[0...N] do not (a collision is
    /// reported at the later of the two migrations). Falls back to the plan's first line.
    func compileDiagnostic(_ plan: Plan) -> Diagnostic? {
        let failure: GraphError
        do {
            try compile(plan)
            return nil
        } catch {
            failure = error
        }
        var culprit: Int?
        for end in plan.migrations.indices {
            var partial = plan
            partial.migrations = Array(plan.migrations[...end])
            do {
                try compile(partial)
            } catch {
                culprit = end
                break
            }
        }
        let mark = culprit.map { plan.migrations[$0].mark } ?? plan.mark
        let path = culprit.map { "migrations[\($0)]" } ?? ""
        var message = "the plan cannot be compiled into a step graph: \(failure)"
        if case .duplicateStep = failure {
            message += "; rename the migration or container so that step ids and host paths differ"
        }
        return Diagnostic(.error, at: Mark(file: plan.file, line: mark.line, column: mark.column), path: path, message)
    }
}

/// Rendering of validation reports.
enum ValidateOutput {
    /// One line per diagnostic, then one summary line per file.
    static func text(_ reports: [ValidationReport]) -> String {
        var out = ""
        for report in reports {
            for diagnostic in report.diagnostics { out += diagnostic.description + "\n" }
            let errors = report.diagnostics.filter { $0.severity == .error }.count
            let warnings = report.diagnostics.filter { $0.severity == .warning }.count
            let skipped = report.skippedFileChecks.count
            var summary = "\(Diagnostic.escapingNonPrintables(report.file)): \(report.isValid ? "valid" : "INVALID") (\(count(errors, "error")), \(count(warnings, "warning"))"
            if skipped > 0 { summary += ", \(count(skipped, "file check")) skipped" }
            out += summary + ")\n"
        }
        return out
    }

    private static func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

    struct JSONFile: Encodable {
        var file: String
        var valid: Bool
        var skippedFileChecks: [String]
    }

    struct JSONDocument: Encodable {
        var formatVersion = 1
        var valid: Bool
        var files: [JSONFile]
        var diagnostics: [Diagnostic]
    }

    /// `{"formatVersion":1,"valid":..,"files":[..],"diagnostics":[{file,line,column,severity,path,message}]}`
    static func json(_ reports: [ValidationReport]) throws -> String {
        let document = JSONDocument(
            valid: reports.allSatisfy(\.isValid),
            files: reports.map { JSONFile(file: $0.file, valid: $0.isValid, skippedFileChecks: $0.skippedFileChecks) },
            diagnostics: reports.flatMap(\.diagnostics))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(document), as: UTF8.self)
    }
}
