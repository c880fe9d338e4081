/// Every failure of the SSH layer: what went wrong (`kind`), on which host, during which step, and
/// what libssh2 itself said at that moment. Descriptions never contain passphrases or key material.
public struct SSHError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// TCP connect or the SSH handshake did not finish within the connect timeout.
        case connectTimeout
        /// Nothing listens on the address and port (TCP RST).
        case connectionRefused
        /// The address cannot be reached (no route, host unreachable).
        case hostUnreachable
        /// The address could not be parsed or resolved.
        case badAddress
        /// An algorithm name the plan asks for is not known to this libssh2 build.
        case unsupportedAlgorithm
        /// The server and the plan have no algorithm in common for some method.
        case noAlgorithmMatch
        /// The SSH handshake failed for another reason (protocol error, server closed).
        case handshakeFailed
        /// The known_hosts file is missing or unreadable.
        case knownHostsUnreadable
        /// The host's key is not in known_hosts.
        case unknownHostKey
        /// known_hosts holds a different key for this host: possible man-in-the-middle.
        case changedHostKey
        /// The server offers no public-key authentication.
        case passwordOnlyServer
        /// The server refused the key (wrong key, wrong user).
        case authenticationFailed
        /// The private key file is missing, unreadable, or could not be decrypted.
        case keyFileUnreadable
        /// A remote command or transfer exceeded its timeout.
        case commandTimeout
        /// A channel could not be opened, or a request on it failed.
        case channelFailure
        /// An SFTP operation failed.
        case sftpFailure
        /// A remote command in a relay exited non-zero (see `operation` for which side).
        case remoteCommandFailed
        /// No data from the peer within the dead-peer timeout (keepalive unanswered).
        case peerUnresponsive
        /// The connection broke (socket error, peer disconnected).
        case connectionLost
        /// The connection was closed by us before or during the operation.
        case closed
        /// The calling task was cancelled.
        case cancelled
        /// A local file or stream could not be read or written.
        case localIO
    }

    public var kind: Kind
    /// The plan's name for the host (`instance1`).
    public var hostName: String
    /// The address and port connected to.
    public var address: String
    public var port: Int
    /// The step that failed, e.g. `handshake`, `host key verification`, `exec "runc list"`.
    public var operation: String
    /// What happened, for a human.
    public var message: String
    /// libssh2's error code and message captured when the call failed (if a libssh2 call failed).
    public var libssh2Code: Int32?
    public var libssh2Message: String?

    public init(
        _ kind: Kind, hostName: String, address: String, port: Int, operation: String, message: String,
        libssh2Code: Int32? = nil, libssh2Message: String? = nil
    ) {
        self.kind = kind
        self.hostName = hostName
        self.address = address
        self.port = port
        self.operation = operation
        self.message = message
        self.libssh2Code = libssh2Code
        self.libssh2Message = libssh2Message
    }

    /// Whether trying again may succeed: connection lost / timeouts yes; host key, authentication
    /// and algorithm mismatches never (retrying would not change the answer, and must not).
    public var isRetryable: Bool {
        switch kind {
        case .connectTimeout, .connectionRefused, .hostUnreachable, .commandTimeout, .peerUnresponsive,
             .connectionLost, .channelFailure, .handshakeFailed:
            return true
        case .badAddress, .unsupportedAlgorithm, .noAlgorithmMatch, .knownHostsUnreadable, .unknownHostKey,
             .changedHostKey, .passwordOnlyServer, .authenticationFailed, .keyFileUnreadable, .sftpFailure,
             .remoteCommandFailed, .closed, .cancelled, .localIO:
            return false
        }
    }

    /// `[addr]:port` unless the port is 22, as OpenSSH writes hosts.
    public var hostAndPort: String { port == 22 ? address : "[\(address)]:\(port)" }

    public var description: String {
        var s = "ssh \(hostName) (\(hostAndPort)): \(operation): \(message)"
        if let m = libssh2Message, !m.isEmpty {
            s += " [libssh2"
            if let c = libssh2Code { s += " \(c)" }
            s += ": \(m)]"
        }
        return s
    }
}
