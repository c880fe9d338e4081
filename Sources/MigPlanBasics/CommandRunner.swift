import Foundation

/// What a command run on a host (over SSH, or locally in tests) gave back.
public struct CommandOutput: Sendable, Equatable {
    public var exitStatus: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]

    public init(exitStatus: Int32, stdout: [UInt8] = [], stderr: [UInt8] = []) {
        self.exitStatus = exitStatus
        self.stdout = stdout
        self.stderr = stderr
    }

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
    public var succeeded: Bool { exitStatus == 0 }

    /// The last `maxBytes` of stderr as text, for error messages and the journal.
    public func stderrTail(maxBytes: Int = 4096) -> String {
        String(decoding: stderr.suffix(maxBytes), as: UTF8.self)
    }
}

/// Runs a shell command line on one host. The SSH layer implements it for real hosts; tests and
/// the lab may implement it locally. Callers build the line with `ShellQuote` from plan values.
public protocol CommandRunner: Sendable {
    /// A name for messages and the journal (the plan's host name).
    var hostName: String { get }
    /// Run `command` through the remote user's shell; both output streams are drained.
    /// Throws on transport failure or timeout; a non-zero exit status is a result, not an error.
    func run(_ command: String, timeout: Duration?) async throws -> CommandOutput
}
