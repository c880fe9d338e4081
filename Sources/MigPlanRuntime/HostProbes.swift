import MigPlanBasics

/// Probes of a host that are not about one container.
public enum HostProbes {
    /// Free space of the file system holding `path`: `df -PB1 PATH` (POSIX format, bytes).
    public static func freeSpace(path: String) -> String {
        "df -PB1 \(ShellQuote.quote(path))"
    }

    /// The figures of one `df -PB1` line.
    public struct DiskSpace: Sendable, Equatable, Codable {
        public var filesystem: String
        public var totalBytes: UInt64
        public var usedBytes: UInt64
        public var availableBytes: UInt64
        public var mountPoint: String
    }

    /// Parse `df -PB1 PATH` output: a header line and one data line (the mount point may contain
    /// spaces; it is the rest of the line after the capacity column).
    public static func parseFreeSpace(_ output: CommandOutput, host: String? = nil) throws -> DiskSpace {
        guard output.succeeded else {
            throw RuntimeError(code: .commandFailed, host: host, operation: "df", message: "df failed: \(firstLine(output.stderrText))",
                               exitStatus: output.exitStatus, stderrTail: output.stderrTail(maxBytes: 1024))
        }
        let lines = output.stdoutText.split(whereSeparator: \.isNewline)
        guard lines.count >= 2, lines[0].hasPrefix("Filesystem") else {
            throw ContainerStateParser.malformed("df", host: host, container: nil, output: output, why: "no df -P header and data line")
        }
        let fields = lines[1].split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count == 6, let total = UInt64(fields[1]), let used = UInt64(fields[2]),
              let avail = UInt64(fields[3]), fields[4].hasSuffix("%") else {
            throw ContainerStateParser.malformed("df", host: host, container: nil, output: output, why: "unexpected df -P data line")
        }
        return DiskSpace(filesystem: String(fields[0]), totalBytes: total, usedBytes: used, availableBytes: avail,
                         mountPoint: String(fields[5]))
    }
}
