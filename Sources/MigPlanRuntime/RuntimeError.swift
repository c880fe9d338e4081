import MigPlanBasics

/// A failure of a container runtime, CRIU or a host probe, with what a user needs to act on it:
/// the host, the container, the operation, the command's exit status and stderr, and for
/// checkpoint/restore the tail of CRIU's own log. Never contains secrets: runtime commands carry
/// none.
public struct RuntimeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Equatable, Codable {
        /// The command ran and exited non-zero.
        case commandFailed
        /// The command's output could not be parsed (`runc state`, `docker inspect`, `df`...).
        case malformedOutput
        /// A checkpoint or restore failed inside CRIU (see `criuLogTail`).
        case criuFailed
        /// The container does not exist on that host.
        case notFound
        /// The container did not reach the awaited state in time.
        case timeout
        /// The host lacks something (CRIU check failed, a feature is missing).
        case unsupported
        /// A value cannot be used (e.g. an empty container name).
        case invalidArgument
    }

    public var code: Code
    public var host: String?
    public var container: String?
    /// What was attempted, e.g. "runc checkpoint".
    public var operation: String
    public var message: String
    public var exitStatus: Int32?
    /// The last bytes of the command's stderr.
    public var stderrTail: String
    /// CRIU's errors and last log lines (dump.log / restore.log), when they could be read.
    public var criuLogTail: String?

    public init(code: Code, host: String? = nil, container: String? = nil, operation: String, message: String,
                exitStatus: Int32? = nil, stderrTail: String = "", criuLogTail: String? = nil) {
        self.code = code
        self.host = host
        self.container = container
        self.operation = operation
        self.message = message
        self.exitStatus = exitStatus
        self.stderrTail = stderrTail
        self.criuLogTail = criuLogTail
    }

    public var description: String {
        var s = ""
        if let host { s += "\(host): " }
        s += operation
        if let container { s += " \(container)" }
        s += ": \(message)"
        if let exitStatus { s += " (exit status \(exitStatus))" }
        let err = stderrTail.trimmingTrailingWhitespace
        if !err.isEmpty, !message.contains(err) { s += "\nstderr: \(err)" }
        if let criuLogTail, !criuLogTail.isEmpty { s += "\nCRIU log:\n\(criuLogTail)" }
        return s
    }
}

extension String {
    var trimmingTrailingWhitespace: String {
        var s = Substring(self)
        while let last = s.last, last.isWhitespace { s.removeLast() }
        return String(s)
    }
}
