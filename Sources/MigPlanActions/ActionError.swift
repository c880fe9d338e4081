import MigPlanBasics
import MigPlanSSH

/// A failure of one live step: what went wrong, where, and whether trying again may help.
/// Descriptions never contain secrets (commands are built from plan values, which hold none).
public struct ActionError: Error, Sendable, CustomStringConvertible, RetryClassifiable {
    public enum Kind: String, Sendable, Codable {
        /// A remote command exited non-zero.
        case commandFailed
        /// The SSH layer failed (see `message`; retryable when the connection broke or timed out).
        case transport
        /// The archive's digest on the destination differs from what the controller relayed.
        case digestMismatch
        /// The archive holds an entry that would land outside its directory (or a device node...).
        case archiveRefused
        /// The container is not where it should be, or not running.
        case containerState
        /// The workload answered with a state that is not the one it had before the move.
        case stateLost
        /// The plan and the hosts disagree before anything ran (container on neither / both hosts).
        case convergence
        /// Not available in this build.
        case unsupported
        /// The host lacks something the move needs (runtime, CRIU, space).
        case preflight
        /// The runtime layer reported an error.
        case runtime
    }

    public var kind: Kind
    public var host: String?
    public var step: String?
    public var message: String
    public var isRetryable: Bool

    public init(_ kind: Kind, host: String? = nil, step: String? = nil, _ message: String, retryable: Bool = false) {
        self.kind = kind
        self.host = host
        self.step = step
        self.message = message
        self.isRetryable = retryable
    }

    public var description: String {
        var s = ""
        if let host { s += "\(host): " }
        s += message
        return s
    }

    /// Wraps any error from a lower layer, keeping its retry classification.
    static func wrap(_ error: any Error, host: String?) -> ActionError {
        if let e = error as? ActionError { return e }
        if let e = error as? SSHError {
            return ActionError(.transport, host: nil, String(describing: e), retryable: e.isRetryable)
        }
        if let e = error as? ArchiveRejection { return ActionError(.archiveRefused, host: host, e.description) }
        let retryable = (error as? any RetryClassifiable)?.isRetryable ?? false
        return ActionError(.runtime, host: nil, String(describing: error), retryable: retryable)
    }
}
