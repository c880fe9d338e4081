import Foundation
import MigPlanModel

/// Output forms of a step graph (`migplan plan --format`).
public enum GraphFormat: String, Sendable, CaseIterable {
    case text, json, dot
}

extension StepGraph {
    /// Renders the graph in `format`; every form ends with a newline.
    public func rendered(as format: GraphFormat) -> String {
        switch format {
        case .text: return textRendering()
        case .json: return jsonRendering()
        case .dot: return dotRendering()
        }
    }

    // MARK: JSON

    /// Stable JSON: sorted keys, two-space indentation, no escaped slashes (docs/plan-graph.md).
    public func jsonRendering() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings, ints, doubles and bools cannot fail.
        let data = (try? encoder.encode(self)) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// What `migplan plan --format json` prints when a plan cannot be compiled: the same shape as
    /// `migplan validate --format json` (`{"formatVersion": 1, "valid": false, "diagnostics":
    /// [{file, line, column, severity, path, message}]}`), so a pipeline parses one format.
    public static func failureJSON(diagnostics: [Diagnostic]) -> String {
        struct Document: Encodable {
            var formatVersion = StepGraph.currentFormatVersion
            var valid = false
            var diagnostics: [Diagnostic]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Document(diagnostics: diagnostics))) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Decodes the JSON form, refusing a format version this build does not know.
    public static func decodeJSON(_ data: Data) throws -> StepGraph {
        let graph = try JSONDecoder().decode(StepGraph.self, from: data)
        guard graph.formatVersion == currentFormatVersion else {
            throw DecodingError.dataCorrupted(.init(
                codingPath: [], debugDescription: "unsupported step graph formatVersion \(graph.formatVersion)"))
        }
        return graph
    }

    // MARK: Text

    /// Readable listing: steps in execution order, grouped by migration, then what runs on failure.
    public func textRendering() -> String {
        var lines: [String] = []
        let rollbackCount = rollbacks.reduce(0) { $0 + $1.steps.count }
        var header = "Plan \(plan)"
        if let planFile { header += " (\(planFile))" }
        header += ": \(steps.count) steps"
        if !rollbacks.isEmpty {
            header += ", \(rollbacks.count) rollback group\(rollbacks.count == 1 ? "" : "s") (\(rollbackCount) steps)"
        }
        lines.append(header)
        var number = 0
        for migration in migrationsInOrder {
            lines.append("")
            lines.append("Migration \(migration):")
            for step in steps where step.migration == migration {
                number += 1
                lines += Self.describe(step, number: number)
            }
            for group in rollbacks where group.migration == migration {
                lines.append("")
                lines.append("  On failure: \(group.id), armed after \(group.armedBy.joined(separator: ", "))"
                    + " acts, until \(group.disarmedBy.joined(separator: ", ")) succeeds:")
                for (offset, step) in group.steps.enumerated() {
                    lines += Self.describe(step, number: offset + 1, indent: "    ", marker: "r")
                }
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private var migrationsInOrder: [String] {
        var seen: [String] = []
        for step in allSteps where !seen.contains(step.migration) { seen.append(step.migration) }
        return seen
    }

    private static func describe(_ step: Step, number: Int, indent: String = "  ", marker: String = "") -> [String] {
        var details: [String] = []
        details.append("after: " + (step.dependsOn.isEmpty ? "-" : step.dependsOn.joined(separator: ", ")))
        details.append(step.idempotentByProbe ? "idempotent by probe" : "not idempotent")
        if step.reverifyOnResume { details.append("re-checked on resume") }
        if let timeout = step.timeoutSeconds { details.append("timeout \(Self.seconds(timeout))") }
        if !step.metrics.isEmpty { details.append("metrics: " + step.metrics.map(\.rawValue).joined(separator: ", ")) }
        let head = "\(indent)\(marker)\(number). "
        let pad = String(repeating: " ", count: head.count)
        var lines = [
            head + step.id,
            pad + "on \(step.location): \(step.action.summary)",
            pad + details.joined(separator: "; "),
        ]
        if !step.onFailure.isEmpty { lines.append(pad + "on failure: " + step.onFailure.joined(separator: ", ")) }
        return lines
    }

    private static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value)) s" : "\(value) s"
    }

    // MARK: DOT

    /// Graphviz: one cluster per migration; edges point from a step to the steps that follow it;
    /// rollback groups are dashed clusters reached by red dashed "on failure" edges.
    public func dotRendering() -> String {
        var lines = ["digraph \(Self.dotQuote(plan)) {", "  rankdir=TB;",
                     "  node [shape=box, fontname=\"Helvetica\", fontsize=10];",
                     "  edge [fontname=\"Helvetica\", fontsize=9];"]
        for (index, migration) in migrationsInOrder.enumerated() {
            lines.append("  subgraph \(Self.dotQuote("cluster_\(index)")) {")
            lines.append("    label=\(Self.dotQuote("migration \(migration)"));")
            for step in steps where step.migration == migration {
                lines.append("    \(Self.dotNode(step));")
            }
            lines.append("  }")
        }
        for (index, group) in rollbacks.enumerated() {
            lines.append("  subgraph \(Self.dotQuote("cluster_rollback_\(index)")) {")
            lines.append("    label=\(Self.dotQuote("on failure: \(group.id)")); style=dashed; color=red;")
            for step in group.steps {
                lines.append("    \(Self.dotNode(step));")
            }
            lines.append("  }")
        }
        for step in allSteps {
            for dependency in step.dependsOn {
                lines.append("  \(Self.dotQuote(dependency)) -> \(Self.dotQuote(step.id));")
            }
        }
        for group in rollbacks {
            let entries = group.steps.filter(\.dependsOn.isEmpty)
            for trigger in group.armedBy {
                for entry in entries {
                    lines.append("  \(Self.dotQuote(trigger)) -> \(Self.dotQuote(entry.id))"
                        + " [style=dashed, color=red, label=\"on failure\"];")
                }
            }
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    private static func dotNode(_ step: Step) -> String {
        var label = "\(step.id)\\n\(step.action.kind)"
        if !step.metrics.isEmpty { label += "\\n[" + step.metrics.map(\.rawValue).joined(separator: ", ") + "]" }
        var attributes = "label=\"\(dotEscape(label))\""
        if step.role == .rollback { attributes += ", style=dashed, color=red" }
        if step.location == .controller { attributes += ", shape=ellipse" }
        return "\(dotQuote(step.id)) [\(attributes)]"
    }

    /// A DOT string literal; `\n` sequences we put in labels are kept, quotes escaped.
    private static func dotQuote(_ text: String) -> String { "\"" + dotEscape(text) + "\"" }

    private static func dotEscape(_ text: String) -> String {
        text.replacingOccurrences(of: "\"", with: "\\\"")
    }
}
