import ArgumentParser
import Foundation
import MigPlanGraph
import MigPlanModel

/// `migplan plan PLAN`: compile a plan into the step graph `apply` runs, without connecting anywhere.
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show the step graph a plan compiles into, without connecting anywhere.",
        discussion: """
        The plan is loaded and validated first (as migplan validate does, without the local file \
        checks); an invalid plan prints its diagnostics on stderr and exits 1. Then it is compiled \
        into the DAG of steps the engine runs: each step has an id (SUBJECT.VERB@HOST), the host it \
        runs on (or the controller), what it does, what it depends on, whether it is idempotent \
        by probe, and which of the paper's metrics it counts towards. Rollback groups show what \
        runs on failure. See docs/plan-graph.md.

        Formats: text (readable, the default), json (stable, versioned: "formatVersion": 1), \
        dot (Graphviz: migplan plan --format dot PLAN | dot -Tsvg > graph.svg).

        With --format json, an invalid plan or a graph error is printed on stdout as JSON too, in \
        the form of migplan validate --format json ({"formatVersion": 1, "valid": false, \
        "diagnostics": [...]}).

        Exit status: 0 compiled, 1 invalid plan (or a graph error such as a cycle), 2 usage error.
        """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, dot

        var graphFormat: GraphFormat {
            switch self {
            case .text: .text
            case .json: .json
            case .dot: .dot
            }
        }
    }

    @Argument(help: ArgumentHelp("The plan file (YAML).", valueName: "plan"))
    var plan: String

    @Option(name: .long, help: "Output format: text, json or dot.")
    var format: Format = .text

    func run() throws {
        switch PlanRenderer.render(file: plan, format: format.graphFormat, catalog: SupportedAlgorithms.catalog) {
        case .success(let output):
            FileHandle.standardError.write(Data(output.warnings.map { $0 + "\n" }.joined().utf8))
            print(output.text, terminator: "")
        case .failure(let messages, let diagnostics):
            if format == .json {
                print(StepGraph.failureJSON(diagnostics: diagnostics), terminator: "")
            } else {
                FileHandle.standardError.write(Data(messages.map { $0 + "\n" }.joined().utf8))
            }
            throw ExitCode(MigPlanExit.failure)
        }
    }
}

/// Loads, validates, compiles and renders one plan (separate from the command so tests call it).
enum PlanRenderer {
    struct Output: Sendable {
        var text: String
        /// Warnings of the validator, as `file:line:column: warning: ...` lines.
        var warnings: [String]
    }

    enum Result: Sendable {
        case success(Output)
        /// Diagnostics or the graph error, one line each, and as diagnostics (for JSON).
        case failure([String], [Diagnostic])
    }

    static func render(file: String, format: GraphFormat, catalog: AlgorithmCatalog,
                       options: PlanLoadOptions = PlanLoadOptions()) -> Result {
        let report = PlanValidator(catalog: catalog, fileChecks: .never).check(file: file, options: options)
        let diagnostics = report.diagnostics.filter { $0.severity != .note }
        let shown = diagnostics.map(\.description)
        guard let plan = report.plan, report.isValid else {
            return .failure(shown + ["\(file): invalid plan; nothing compiled"], diagnostics)
        }
        do {
            let graph = try PlanCompiler.compile(plan)
            return .success(Output(text: graph.rendered(as: format), warnings: shown))
        } catch {
            let diagnostic = PlanCompiler.diagnostic(for: error, in: plan)
            return .failure(shown + [diagnostic.description], diagnostics + [diagnostic])
        }
    }
}
