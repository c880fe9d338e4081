// Controller-local paths in plans: `~` and `${VAR}` expand, relative paths are relative to the plan file.

import Foundation

/// Why a path could not be expanded.
public struct PathExpansionError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Expands plan paths. Pure: the environment and home directory are injected.
public struct PathExpander: Sendable {
    public var environment: [String: String]
    public var homeDirectory: String?

    public init(environment: [String: String], homeDirectory: String?) {
        self.environment = environment
        self.homeDirectory = homeDirectory
    }

    /// `~` / `~/x` → home, `${VAR}` → its value (unset → error naming it), then relative →
    /// `base/relative`, normalised: `.` and empty components removed, `..` removed together with
    /// the component before it, after that component is resolved if it is a symbolic link (so
    /// `link/..` is the parent of the link's target, as the kernel sees it).
    public func expand(_ raw: String, relativeTo base: String) throws(PathExpansionError) -> String {
        var path = raw
        if path == "~" || path.hasPrefix("~/") {
            guard let home = homeDirectory ?? environment["HOME"], !home.isEmpty else {
                throw PathExpansionError(message: "cannot expand \"~\": HOME is not set")
            }
            path = home + path.dropFirst()
        } else if path.hasPrefix("~") {
            throw PathExpansionError(message: "\"~user\" paths are not supported; write the path out")
        }
        path = try expandVariables(path)
        if path.isEmpty { throw PathExpansionError(message: "the path is empty after expansion") }
        if !path.hasPrefix("/") { path = base + "/" + path }
        return Self.normalizeFollowingSymlinks(path)
    }

    /// How diagnostics show a controller path: as written when it uses `${VAR}` (the variable's
    /// value may be a secret, e.g. a password variable used by mistake), else the resolved path.
    public static func displayForm(written: String, resolved: String) -> String {
        written.contains("${") ? written : resolved
    }

    /// Normalises an absolute path; before `..` drops a component, a component that is a
    /// symbolic link is replaced by its target (`realpath`).
    public static func normalizeFollowingSymlinks(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                let prefix = "/" + parts.joined(separator: "/")
                if !parts.isEmpty, (try? FileManager.default.destinationOfSymbolicLink(atPath: prefix)) != nil,
                   let real = realpath(prefix, nil) {
                    parts = String(cString: real).split(separator: "/", omittingEmptySubsequences: true)
                    free(real)
                }
                if !parts.isEmpty { parts.removeLast() }
                continue
            }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// Replaces every `${NAME}`; `$` not followed by `{` stays literal.
    public func expandVariables(_ text: String) throws(PathExpansionError) -> String {
        var result = ""
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            result += rest[..<dollar]
            let afterDollar = rest.index(after: dollar)
            guard afterDollar < rest.endIndex, rest[afterDollar] == "{" else {
                result.append("$")
                rest = rest[afterDollar...]
                continue
            }
            let nameStart = rest.index(after: afterDollar)
            guard let close = rest[nameStart...].firstIndex(of: "}") else {
                throw PathExpansionError(message: "unterminated \"${\" in \"\(text)\"")
            }
            let name = String(rest[nameStart..<close])
            guard Self.isVariableName(name) else {
                throw PathExpansionError(message: "invalid variable name \"\(name)\" in \"${\(name)}\"")
            }
            guard let value = environment[name] else {
                throw PathExpansionError(message: "environment variable \(name) is not set (used as ${\(name)})")
            }
            result += value
            rest = rest[rest.index(after: close)...]
        }
        result += rest
        return result
    }

    static func isVariableName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic) else {
            return false
        }
        return name.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
    }

    /// Lexical normalisation of an absolute path (does not look at symbolic links).
    public static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                if !parts.isEmpty { parts.removeLast() }
                continue
            }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }
}
