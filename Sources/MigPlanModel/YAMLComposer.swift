// A bounded YAML composer over libyaml's event API (the libyaml that Yams bundles).
//
// Yams' own `compose` hashes whole key nodes to find duplicate keys (exponential on alias bombs
// used as keys) and recurses without a depth bound of its own, so plans are composed here with
// explicit limits: input size (checked by the loader), nesting depth, and the number of nodes
// after alias expansion. Every node keeps its 1-based mark; duplicate keys are reported with both
// positions and composition continues, so all of them are reported.

internal import CYaml

/// A composed YAML node with its position.
struct YNode: Sendable {
    enum ScalarStyle: Sendable { case plain, quoted, block }

    enum Kind: Sendable {
        case scalar(String, style: ScalarStyle, tag: String?)
        case sequence([YNode])
        case mapping([YPair])
    }

    var kind: Kind
    var line: Int
    var column: Int
    /// Nodes in this subtree, aliases counted as expanded (saturating).
    var size: Int

    var kindName: String {
        switch kind {
        case .scalar: "a scalar"
        case .sequence: "a list"
        case .mapping: "a mapping"
        }
    }
}

struct YPair: Sendable {
    var key: String
    var keyLine: Int
    var keyColumn: Int
    var value: YNode
}

/// A fatal YAML problem (the document cannot be composed further).
struct YAMLProblem: Error, Sendable {
    var line: Int
    var column: Int
    var message: String
}

/// A non-fatal problem found while composing (duplicate keys, non-scalar keys).
struct YAMLWarningLike: Sendable {
    var line: Int
    var column: Int
    var path: String
    var message: String
}

struct YAMLLimits: Sendable {
    /// Maximum nesting of collections.
    var maxDepth = 64
    /// Maximum nodes in the document, aliases expanded.
    var maxNodes = 100_000
}

final class YAMLComposer {
    private var parser = yaml_parser_t()
    private var anchors: [String: YNode] = [:]
    private let limits: YAMLLimits
    private(set) var problems: [YAMLWarningLike] = []

    init(limits: YAMLLimits) {
        self.limits = limits
    }

    /// Composes the single document in `bytes` (UTF-8). Returns nil for an empty stream.
    func compose(_ bytes: [UInt8]) throws(YAMLProblem) -> YNode? {
        guard yaml_parser_initialize(&parser) == 1 else {
            throw YAMLProblem(line: 1, column: 1, message: "cannot initialise the YAML parser (out of memory)")
        }
        defer { yaml_parser_delete(&parser) }
        let result: Result<YNode?, YAMLProblem> = bytes.withUnsafeBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            do throws(YAMLProblem) {
                return .success(try composeStream())
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private func composeStream() throws(YAMLProblem) -> YNode? {
        var event = try nextEvent()
        guard event.type == YAML_STREAM_START_EVENT else { throw unexpected(event) }
        event = try nextEvent()
        if event.type == YAML_STREAM_END_EVENT { return nil }
        guard event.type == YAML_DOCUMENT_START_EVENT else { throw unexpected(event) }
        let root = try composeNode(try nextEvent(), depth: 0, path: "")
        event = try nextEvent()
        guard event.type == YAML_DOCUMENT_END_EVENT else { throw unexpected(event) }
        event = try nextEvent()
        if event.type == YAML_DOCUMENT_START_EVENT {
            throw YAMLProblem(line: event.line, column: event.column,
                              message: "a plan file holds exactly one YAML document; found a second one (`---`)")
        }
        return root
    }

    private func composeNode(_ event: Event, depth: Int, path: String) throws(YAMLProblem) -> YNode {
        switch event.type {
        case YAML_ALIAS_EVENT:
            let name = event.aliasAnchor
            guard let node = anchors[name] else {
                throw YAMLProblem(line: event.line, column: event.column, message: "unknown alias *\(name)")
            }
            var copy = node
            copy.line = event.line
            copy.column = event.column
            if copy.size > limits.maxNodes {
                throw bomb(event)
            }
            return copy
        case YAML_SCALAR_EVENT:
            let node = YNode(kind: .scalar(event.scalarValue, style: event.scalarStyle, tag: event.tag),
                             line: event.line, column: event.column, size: 1)
            register(event.anchor, node)
            return node
        case YAML_SEQUENCE_START_EVENT:
            try checkDepth(depth, event)
            var items: [YNode] = []
            var size = 1
            var next = try nextEvent()
            while next.type != YAML_SEQUENCE_END_EVENT {
                let item = try composeNode(next, depth: depth + 1, path: "\(path)[\(items.count)]")
                size = saturatingAdd(size, item.size)
                if size > limits.maxNodes { throw bomb(next) }
                items.append(item)
                next = try nextEvent()
            }
            let node = YNode(kind: .sequence(items), line: event.line, column: event.column, size: size)
            register(event.anchor, node)
            return node
        case YAML_MAPPING_START_EVENT:
            try checkDepth(depth, event)
            var pairs: [YPair] = []
            var merges: [YPair] = []
            var seen: [String: (Int, Int)] = [:]
            var size = 1
            var next = try nextEvent()
            while next.type != YAML_MAPPING_END_EVENT {
                let keyEvent = next
                let keyNode = try composeNode(keyEvent, depth: depth + 1, path: path)
                var valuePath = path
                if case .scalar(let key, _, _) = keyNode.kind { valuePath = path.isEmpty ? key : "\(path).\(key)" }
                let value = try composeNode(try nextEvent(), depth: depth + 1, path: valuePath)
                size = saturatingAdd(saturatingAdd(size, keyNode.size), value.size)
                if size > limits.maxNodes { throw bomb(keyEvent) }
                next = try nextEvent()
                guard case .scalar(let key, let style, _) = keyNode.kind else {
                    problems.append(YAMLWarningLike(line: keyNode.line, column: keyNode.column, path: path,
                                                    message: "mapping keys must be plain strings, not \(keyNode.kindName)"))
                    continue
                }
                if key == "<<", style == .plain {
                    // Merge key: `<<: *defaults` or `<<: [*a, *b]`; explicit keys win.
                    switch value.kind {
                    case .mapping(let merged):
                        merges.append(contentsOf: merged)
                    case .sequence(let list):
                        for case .mapping(let merged) in list.map(\.kind) { merges.append(contentsOf: merged) }
                    case .scalar:
                        problems.append(YAMLWarningLike(line: value.line, column: value.column, path: path,
                                                        message: "a merge key (<<) needs a mapping or a list of mappings"))
                    }
                    continue
                }
                let childPath = path.isEmpty ? key : "\(path).\(key)"
                if let first = seen[key] {
                    problems.append(YAMLWarningLike(
                        line: keyNode.line, column: keyNode.column, path: childPath,
                        message: "duplicate key \"\(key)\" (first defined at line \(first.0), column \(first.1))"))
                    continue
                }
                seen[key] = (keyNode.line, keyNode.column)
                pairs.append(YPair(key: key, keyLine: keyNode.line, keyColumn: keyNode.column, value: value))
            }
            for merged in merges where seen[merged.key] == nil {
                seen[merged.key] = (merged.keyLine, merged.keyColumn)
                pairs.append(merged)
            }
            let node = YNode(kind: .mapping(pairs), line: event.line, column: event.column, size: size)
            register(event.anchor, node)
            return node
        default:
            throw unexpected(event)
        }
    }

    private func checkDepth(_ depth: Int, _ event: Event) throws(YAMLProblem) {
        if depth >= limits.maxDepth {
            throw YAMLProblem(line: event.line, column: event.column,
                              message: "nesting deeper than \(limits.maxDepth) levels; a plan never needs that")
        }
    }

    private func bomb(_ event: Event) -> YAMLProblem {
        YAMLProblem(line: event.line, column: event.column,
                    message: "the document expands to more than \(limits.maxNodes) nodes (aliases counted as expanded): refused (alias bomb?)")
    }

    private func register(_ anchor: String?, _ node: YNode) {
        if let anchor { anchors[anchor] = node }
    }

    private func unexpected(_ event: Event) -> YAMLProblem {
        YAMLProblem(line: event.line, column: event.column, message: "unexpected YAML event \(event.type.rawValue)")
    }

    private func nextEvent() throws(YAMLProblem) -> Event {
        let event = Event()
        guard yaml_parser_parse(&parser, &event.raw) == 1 else {
            throw parserProblem()
        }
        return event
    }

    private func parserProblem() -> YAMLProblem {
        let problem = parser.problem.map { String(cString: $0) } ?? "invalid YAML"
        let context = parser.context.map { String(cString: $0) }
        let mark = parser.problem_mark
        var message = problem
        if let context {
            message += " (\(context) started at line \(parser.context_mark.line + 1), column \(parser.context_mark.column + 1))"
        }
        if problem.contains("cannot start any token") || problem.contains("tab") {
            message += "; YAML indentation must use spaces, not tabs"
        }
        return YAMLProblem(line: mark.line + 1, column: mark.column + 1, message: message)
    }
}

private func saturatingAdd(_ a: Int, _ b: Int) -> Int {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? Int.max : sum
}

/// Owner of one libyaml event.
private final class Event {
    var raw = yaml_event_t()
    deinit { yaml_event_delete(&raw) }

    var type: yaml_event_type_t { raw.type }
    var line: Int { Int(raw.start_mark.line) + 1 }
    var column: Int { Int(raw.start_mark.column) + 1 }

    var aliasAnchor: String { string(raw.data.alias.anchor) ?? "" }

    var anchor: String? {
        switch raw.type {
        case YAML_SCALAR_EVENT: string(raw.data.scalar.anchor)
        case YAML_SEQUENCE_START_EVENT: string(raw.data.sequence_start.anchor)
        case YAML_MAPPING_START_EVENT: string(raw.data.mapping_start.anchor)
        default: nil
        }
    }

    var tag: String? {
        switch raw.type {
        case YAML_SCALAR_EVENT: string(raw.data.scalar.tag)
        case YAML_SEQUENCE_START_EVENT: string(raw.data.sequence_start.tag)
        case YAML_MAPPING_START_EVENT: string(raw.data.mapping_start.tag)
        default: nil
        }
    }

    var scalarValue: String {
        guard let value = raw.data.scalar.value else { return "" }
        let buffer = UnsafeBufferPointer(start: value, count: raw.data.scalar.length)
        return String(decoding: buffer, as: UTF8.self)
    }

    var scalarStyle: YNode.ScalarStyle {
        switch raw.data.scalar.style {
        case YAML_PLAIN_SCALAR_STYLE, YAML_ANY_SCALAR_STYLE: .plain
        case YAML_LITERAL_SCALAR_STYLE, YAML_FOLDED_SCALAR_STYLE: .block
        default: .quoted
        }
    }

    private func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        guard let pointer else { return nil }
        return String(cString: pointer)
    }
}
