// Diagnostics: what `migplan validate` prints, one per problem, each pointing at a line.

/// How bad a diagnostic is.
public enum Severity: String, Sendable, Hashable, Codable, Comparable {
    /// Informational, e.g. a file check that was skipped.
    case note
    /// The plan is valid but something deserves attention (e.g. `sslmode: require`).
    case warning
    /// The plan is invalid.
    case error

    private var rank: Int {
        switch self {
        case .note: 0
        case .warning: 1
        case .error: 2
        }
    }

    public static func < (lhs: Severity, rhs: Severity) -> Bool { lhs.rank < rhs.rank }
}

/// One finding about a plan file: `file:line:column: severity: path: message`.
/// Messages never contain secrets (passphrases and passwords are never read from the environment
/// by the validator; only the variable names appear).
public struct Diagnostic: Sendable, Hashable, Codable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var severity: Severity
    /// Field path in the plan, e.g. `hosts.instance2.key`, `migrations[0].containers[1]`; `""` for the whole file.
    public var path: String
    public var message: String

    public init(file: String, line: Int, column: Int, severity: Severity, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.severity = severity
        self.path = path
        self.message = message
    }

    public init(_ severity: Severity, at mark: Mark, path: String, _ message: String) {
        self.init(file: mark.file, line: mark.line, column: mark.column, severity: severity, path: path, message: message)
    }

    public var mark: Mark { Mark(file: file, line: line, column: column) }

    /// `plans/x.yaml:12:5: error: hosts.instance2.key: unknown key "ops"`. Control and other
    /// non-printable characters (e.g. an ANSI escape in a name) are shown escaped (`\u{1B}`) so a
    /// plan cannot rewrite the terminal.
    public var description: String {
        let location = "\(Self.escapingNonPrintables(file)):\(line):\(column): \(severity.rawValue): "
        let text = path.isEmpty ? message : "\(path): \(message)"
        return location + Self.escapingNonPrintables(text)
    }

    /// `text` with control, format, separator and unassigned characters written as `\u{XX}`
    /// (and `\` as `\\` when such characters were escaped, so the output stays unambiguous).
    public static func escapingNonPrintables(_ text: String) -> String {
        func printable(_ scalar: Unicode.Scalar) -> Bool {
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .privateUse, .unassigned: false
            default: true
            }
        }
        guard !text.unicodeScalars.allSatisfy(printable) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar == "\\" {
                out += "\\\\"
            } else if printable(scalar) {
                out.unicodeScalars.append(scalar)
            } else {
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            }
        }
        return out
    }
}

extension Array where Element == Diagnostic {
    /// True when any diagnostic is an error.
    public var containsErrors: Bool { contains { $0.severity == .error } }
    /// Sorted by position, then severity (errors first), then message: the order they are printed in.
    public func sortedForOutput() -> [Diagnostic] {
        sorted {
            if $0.file != $1.file { return $0.file < $1.file }
            if $0.line != $1.line { return $0.line < $1.line }
            if $0.column != $1.column { return $0.column < $1.column }
            if $0.severity != $1.severity { return $0.severity > $1.severity }
            return $0.message < $1.message
        }
    }
}

/// Thrown by `PlanLoader.loadValid` when a plan has errors; carries every diagnostic.
public struct PlanError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var diagnostics: [Diagnostic]

    public init(file: String, diagnostics: [Diagnostic]) {
        self.file = file
        self.diagnostics = diagnostics
    }

    public var description: String {
        let errors = diagnostics.filter { $0.severity == .error }
        return "\(file): invalid plan (\(errors.count) error\(errors.count == 1 ? "" : "s"))\n"
            + errors.map(\.description).joined(separator: "\n")
    }
}
