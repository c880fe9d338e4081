// Loading a plan file: bounded read, encoding checks, bounded composition, decoding.

import Foundation

/// Limits and environment for loading plans.
public struct PlanLoadOptions: Sendable {
    /// Files larger than this are refused before parsing (default 1 MiB).
    public var maxBytes: Int
    /// Maximum nesting depth of YAML collections.
    public var maxDepth: Int
    /// Maximum YAML nodes, aliases counted as expanded.
    public var maxNodes: Int
    /// Environment used for `${VAR}` and `~` (defaults to the process environment).
    public var environment: [String: String]
    /// Home directory for `~`; nil = `environment["HOME"]`.
    public var homeDirectory: String?

    public init(maxBytes: Int = 1 << 20, maxDepth: Int = 64, maxNodes: Int = 100_000,
                environment: [String: String] = ProcessInfo.processInfo.environment, homeDirectory: String? = nil) {
        self.maxBytes = maxBytes
        self.maxDepth = maxDepth
        self.maxNodes = maxNodes
        self.environment = environment
        self.homeDirectory = homeDirectory
    }
}

/// The outcome of loading one file: a plan when the file could be decoded at all, and every
/// diagnostic found so far (a plan may come with errors; see `isValid`).
public struct PlanLoadResult: Sendable {
    public var file: String
    public var plan: Plan?
    public var diagnostics: [Diagnostic]

    public var isValid: Bool { plan != nil && !diagnostics.containsErrors }
}

public enum PlanLoader {
    /// Reads and decodes the plan at `file` (schema-level checks only; see `PlanValidator`).
    public static func load(file: String, options: PlanLoadOptions = PlanLoadOptions()) -> PlanLoadResult {
        let fileMark = Mark(file: file, line: 1, column: 1)
        func fail(_ message: String) -> PlanLoadResult {
            PlanLoadResult(file: file, plan: nil, diagnostics: [Diagnostic(.error, at: fileMark, path: "", message)])
        }
        let absolute = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: absolute, isDirectory: &isDirectory) else {
            return fail("no such file")
        }
        if isDirectory.boolValue { return fail("is a directory, not a plan file") }
        guard let handle = FileHandle(forReadingAtPath: absolute) else { return fail("cannot open the file for reading (permission denied?)") }
        defer { try? handle.close() }
        let data: Data
        do {
            // Read at most maxBytes + 1: enough to know the file is too large without reading 50 MB.
            data = try handle.read(upToCount: options.maxBytes + 1) ?? Data()
        } catch {
            return fail("cannot read the file: \(error.localizedDescription)")
        }
        if data.count > options.maxBytes {
            return fail("file is larger than \(options.maxBytes) bytes; plans are small, this is refused unread")
        }
        let directory = PathExpander.normalize((absolute as NSString).deletingLastPathComponent)
        return load(contents: [UInt8](data), file: file, directory: directory, options: options)
    }

    /// Decodes plan text. `file` is used in diagnostics, `directory` resolves relative paths.
    public static func load(contents: [UInt8], file: String, directory: String,
                            options: PlanLoadOptions = PlanLoadOptions()) -> PlanLoadResult {
        func fail(_ line: Int, _ column: Int, _ message: String) -> PlanLoadResult {
            PlanLoadResult(file: file, plan: nil,
                           diagnostics: [Diagnostic(.error, at: Mark(file: file, line: line, column: column), path: "", message)])
        }
        if contents.count > options.maxBytes {
            return fail(1, 1, "file is larger than \(options.maxBytes) bytes; plans are small, this is refused unread")
        }
        if let problem = checkText(contents) { return fail(problem.line, problem.column, problem.message) }

        let composer = YAMLComposer(limits: YAMLLimits(maxDepth: options.maxDepth, maxNodes: options.maxNodes))
        let root: YNode?
        do {
            root = try composer.compose(contents)
        } catch {
            return fail(error.line, error.column, error.message)
        }
        var diagnostics = composer.problems.map {
            Diagnostic(.error, at: Mark(file: file, line: $0.line, column: $0.column), path: $0.path, $0.message)
        }
        guard let root else { return fail(1, 1, "the file is empty; a plan starts with apiVersion: migplan/v1") }
        var decoder = PlanDecoder(file: file, directory: directory,
                                  expander: PathExpander(environment: options.environment, homeDirectory: options.homeDirectory))
        let plan = decoder.decodePlan(root)
        diagnostics += decoder.diagnostics
        return PlanLoadResult(file: file, plan: plan, diagnostics: diagnostics)
    }

    /// Loads, validates (no file checks, default catalog) and returns the plan, or throws every error.
    public static func loadValid(file: String, options: PlanLoadOptions = PlanLoadOptions(),
                                 catalog: AlgorithmCatalog = .libssh2_1_10) throws(PlanError) -> Plan {
        let report = PlanValidator(catalog: catalog, fileChecks: .never).check(file: file, options: options)
        guard let plan = report.plan, !report.diagnostics.containsErrors else {
            throw PlanError(file: file, diagnostics: report.diagnostics)
        }
        return plan
    }

    struct TextProblem {
        var line: Int
        var column: Int
        var message: String
    }

    /// Binary garbage, invalid UTF-8 and tabs in indentation, with the first offending position.
    static func checkText(_ bytes: [UInt8]) -> TextProblem? {
        var line = 1
        var column = 1
        var atLineStart = true
        var index = 0
        // Skip a UTF-8 byte order mark.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x0A {
                line += 1
                column = 1
                atLineStart = true
                index += 1
                continue
            }
            if byte == 0 || (byte < 0x20 && byte != 0x09 && byte != 0x0D) || byte == 0x7F {
                return TextProblem(line: line, column: column,
                                   message: String(format: "control byte 0x%02X: this is not a text file (binary data?)", byte))
            }
            if byte == 0x09, atLineStart {
                return TextProblem(line: line, column: column,
                                   message: "tab character in indentation; YAML indentation must use spaces")
            }
            if byte != 0x20 { atLineStart = false }
            let length: Int
            switch byte {
            case 0x00..<0x80: length = 1
            case 0xC2..<0xE0: length = 2
            case 0xE0..<0xF0: length = 3
            case 0xF0..<0xF5: length = 4
            default: length = 0
            }
            var valid = length > 0 && index + length <= bytes.count
            if valid, length > 1 {
                for offset in 1..<length where bytes[index + offset] & 0xC0 != 0x80 { valid = false }
            }
            if valid, length > 1, String(validating: bytes[index..<index + length], as: UTF8.self) == nil { valid = false }
            guard valid else {
                return TextProblem(line: line, column: column,
                                   message: String(format: "invalid UTF-8 (byte 0x%02X): plans are UTF-8 text (binary data?)", byte))
            }
            index += length
            column += 1
        }
        return nil
    }
}
