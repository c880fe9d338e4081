import Foundation
import MigPlanBasics

/// CRIU probes on a host: `criu check` and `criu check --feature NAME`.
public struct CriuCommands: Sendable, Equatable {
    /// The `criu` executable (on the lab hosts a wrapper in /usr/local/sbin, see docs/runtimes.md).
    public var criuPath: String

    public init(criuPath: String = "criu") { self.criuPath = criuPath }

    /// Kernel features worth probing before choosing a memory-transfer strategy.
    public enum Feature: String, Sendable, CaseIterable, Codable {
        /// Soft-dirty tracking: iterative pre-copy (`pre-dump`) needs it.
        case memDirtyTrack = "mem_dirty_track"
        /// userfaultfd: post-copy (lazy pages) needs it.
        case uffd
        case uffdNoncoop = "uffd-noncoop"
    }

    /// `criu check` (stderr folded into stdout: CRIU prints its verdict on either).
    public func check() -> String { "\(ShellQuote.quote(criuPath)) check 2>&1" }

    /// `criu --version`.
    public func version() -> String { "\(ShellQuote.quote(criuPath)) --version" }

    /// A CRIU page server for one dump, in the background once it listens (`-d`): it writes the
    /// pages it receives into `imagesDir`, listens on `address:port` only (a loopback address:
    /// the traffic reaches it through an SSH tunnel), writes its pid to `pidFile` and its log to
    /// `logFile`, and exits when the dump's connection ends.
    public func pageServer(imagesDir: String, address: String, port: Int, pidFile: String, logFile: String) -> String {
        [criuPath, "page-server", "--images-dir", imagesDir, "--address", address, "--port", String(port),
         "-d", "--pidfile", pidFile, "-o", logFile, "-v2"].map(ShellQuote.quote).joined(separator: " ")
    }

    /// `criu check --feature NAME`; CRIU exits non-zero when the feature is missing.
    public func checkFeature(_ feature: Feature) -> String {
        "\(ShellQuote.quote(criuPath)) check --feature \(ShellQuote.quote(feature.rawValue)) 2>&1"
    }

    /// Whether `criu check` passed ("Looks good." and exit 0).
    public static func checkPassed(_ output: CommandOutput) -> Bool {
        output.succeeded && (output.stdoutText + output.stderrText).contains("Looks good")
    }

    /// Whether `criu check --feature` said the feature is there. CRIU 4 prints e.g.
    /// "Dirty tracking is ON" / "Dirty tracking is OFF", "UFFD is supported" or
    /// "... is not supported"; the exit status is the verdict, the text a cross-check.
    public static func featureSupported(_ output: CommandOutput) -> Bool {
        let text = (output.stdoutText + output.stderrText).lowercased()
        if text.contains("is off") || text.contains("not supported") || text.contains("unsupported") { return false }
        return output.succeeded
    }

    /// The version number from `criu --version` ("Version: 4.1.1"), if there is one.
    public static func parseVersion(_ output: CommandOutput) -> String? {
        for line in output.stdoutText.split(whereSeparator: \.isNewline) {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.hasPrefix("Version:") {
                return t.dropFirst("Version:".count).trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// Extracting what matters from a CRIU log (dump.log, restore.log) for error messages.
public enum CriuLog {
    /// Log lines that appear in every run on some machines and mean nothing (platform notes).
    public static let harmless: [String] = ["rlimit: Can't setup RLIMIT_NOFILE"]

    /// Lines that report an error (`Error (file:line): ...`), minus the harmless ones.
    public static func errors(in log: String) -> [String] {
        log.split(whereSeparator: \.isNewline).map(String.init).filter { line in
            (line.contains("Error (") || line.contains("Error:")) && !harmless.contains { line.contains($0) }
        }
    }

    /// A summary for a user: the error lines (at most `maxErrors`, first ones first) followed by
    /// the last `lines` lines of the log, without repeating a line.
    public static func tail(of log: String, lines: Int = 15, maxErrors: Int = 10) -> String {
        let all = log.split(whereSeparator: \.isNewline).map(String.init)
        let last = Array(all.suffix(lines))
        let errs = errors(in: log).filter { !last.contains($0) }.prefix(maxErrors)
        var out: [String] = []
        if !errs.isEmpty {
            out.append(contentsOf: errs)
            out.append("...")
        }
        out.append(contentsOf: last)
        return out.joined(separator: "\n")
    }

    /// A command that prints the last bytes of a log file, or nothing when it is absent.
    public static func readTailCommand(path: String, bytes: Int = 65536) -> String {
        "tail -c \(bytes) \(ShellQuote.quote(path)) 2>/dev/null || true"
    }

    /// The path of CRIU's log named in a runtime's error text: runc/containerd say
    /// "log file: /path/dump.log" or "path= /path/criu-dump.log".
    public static func logPath(inErrorText text: String) -> String? {
        for marker in ["log file: ", "path= ", "log: "] {
            var rest = Substring(text)
            while let r = rest.range(of: marker) {
                let after = rest[r.upperBound...]
                let word = after.prefix { !$0.isWhitespace && $0 != "\"" && $0 != ":" && $0 != "," && $0 != "'" }
                if word.hasPrefix("/"), word.hasSuffix(".log") { return String(word) }
                rest = after
            }
        }
        return nil
    }
}
