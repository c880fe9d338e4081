internal import CLibSSH2
import Foundation
import MigPlanBasics
#if canImport(Glibc)
import Glibc
#endif

/// One authenticated SSH connection to one host: a libssh2 session and its socket, driven by a
/// dedicated thread. Strict: exactly the plan's algorithms, the host key checked against
/// known_hosts before authenticating, public-key authentication only.
///
/// All libssh2 calls run on the connection's own thread in non-blocking mode, waiting with
/// `poll()` on the directions libssh2 reports; async callers are resumed through continuations.
/// Several operations on one connection run one after another.
public final class SSHConnection: CommandRunner, @unchecked Sendable {
    public let endpoint: SSHEndpoint
    public let algorithms: SSHAlgorithms
    /// What the handshake negotiated (`libssh2_session_methods`).
    public let negotiatedAlgorithms: NegotiatedAlgorithms
    /// The server's host key fingerprint as OpenSSH prints it: `SHA256:` + unpadded base64.
    public let hostKeyFingerprint: String
    /// The host key's type (`ssh-ed25519`).
    public let hostKeyType: String
    /// The server's identification string (`SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6`).
    public let serverBanner: String
    /// How long TCP connect, handshake, host key check and authentication took.
    public let connectDuration: Duration

    public var hostName: String { endpoint.hostName }

    let core: SessionCore
    let id: Int
    private let closeLock = NSLock()
    private var isClosed = false

    private static let idLock = NSLock()
    nonisolated(unsafe) private static var nextID = 0

    init(core: SessionCore, algorithms: SSHAlgorithms, info: ConnectInfo) {
        self.core = core
        self.endpoint = core.endpoint
        self.algorithms = algorithms
        self.negotiatedAlgorithms = info.negotiated
        self.hostKeyFingerprint = info.fingerprint
        self.hostKeyType = info.hostKeyType
        self.serverBanner = info.banner
        self.connectDuration = info.duration
        SSHConnection.idLock.lock()
        SSHConnection.nextID += 1
        id = SSHConnection.nextID
        SSHConnection.idLock.unlock()
    }

    deinit { close() }

    /// Disconnects and frees the session (on its thread, after queued work). Safe to call twice.
    public func close() {
        if markClosed() { return }
        let core = self.core
        PendingShutdowns.begin()
        if !core.thread.enqueue({ core.shutdown(); PendingShutdowns.end() }) { PendingShutdowns.end() }
        core.thread.stop()
    }

    /// Marks the connection closed; returns whether it already was.
    private func markClosed() -> Bool {
        closeLock.withLock {
            let was = isClosed
            isClosed = true
            return was
        }
    }

    /// Like `close()`, but returns once the session is disconnected and freed. Call it before the
    /// process exits: OpenSSL's exit handlers must not run while a session thread still uses it.
    public func disconnect() async {
        let wasClosed = markClosed()
        let core = self.core
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let accepted = core.thread.enqueue {
                core.shutdown()
                continuation.resume()
            }
            if !accepted { continuation.resume() }
        }
        if !wasClosed { core.thread.stop() }
    }

    func closedError(_ operation: String) -> SSHError {
        SSHError(.closed, hostName: endpoint.hostName, address: endpoint.address, port: endpoint.port,
                 operation: operation, message: "the connection is closed")
    }

    /// Runs `body` on the connection's thread.
    func perform<T: Sendable>(
        _ operation: String, _ body: @escaping @Sendable (SessionCore, CancelToken) throws(SSHError) -> T
    ) async throws(SSHError) -> T {
        let core = self.core
        let closed = closedError(operation)
        return try await core.thread.perform({ (token: CancelToken) throws(SSHError) -> T in
            try core.ensureUsable(operation)
            return try body(core, token)
        }, closedError: { closed })
    }

    // MARK: connect

    struct ConnectInfo: Sendable {
        var negotiated: NegotiatedAlgorithms
        var fingerprint: String
        var hostKeyType: String
        var banner: String
        var duration: Duration
    }

    /// Connects, checks the host key against `knownHostsPath`, and authenticates with `identity`.
    /// The whole sequence is bounded by `connectTimeout`. `keepaliveInterval` enables keepalives
    /// and dead-peer detection (three intervals without a sign of life → `.peerUnresponsive`).
    /// `log`, if given, receives one line saying what was negotiated (`libssh2_session_methods`).
    public static func connect(
        to endpoint: SSHEndpoint,
        algorithms: SSHAlgorithms = .paperDefaults,
        identity: SSHIdentity,
        knownHostsPath: String,
        connectTimeout: Duration = .seconds(10),
        keepaliveInterval: Duration? = .seconds(15),
        log: (@Sendable (String) -> Void)? = nil
    ) async throws(SSHError) -> SSHConnection {
        LibSSH2.ensureInitialized()
        let thread = SessionThread(name: "ssh-\(endpoint.hostName)")
        let core = SessionCore(endpoint: endpoint, thread: thread)
        let closed = SSHError(.cancelled, hostName: endpoint.hostName, address: endpoint.address,
                              port: endpoint.port, operation: "connect", message: "thread stopped")
        do throws(SSHError) {
            let info = try await thread.perform({ (token: CancelToken) throws(SSHError) -> ConnectInfo in
                do throws(SSHError) {
                    return try core.establish(
                        algorithms: algorithms, identity: identity, knownHostsPath: knownHostsPath,
                        connectTimeout: connectTimeout, keepaliveInterval: keepaliveInterval, token: token)
                } catch {
                    core.shutdown()
                    throw error
                }
            }, closedError: { closed })
            if let k = core.keepaliveSeconds {
                thread.enqueue { thread.setIdleTick(interval: TimeInterval(k)) { core.idleKeepalive() } }
            }
            log?("ssh \(endpoint.hostName) (\(endpoint.knownHostsName)): connected in \(info.duration), "
                 + "\(info.negotiated.summary), host key \(info.hostKeyType) \(info.fingerprint), server \(info.banner)")
            return SSHConnection(core: core, algorithms: algorithms, info: info)
        } catch {
            thread.stop()
            throw error
        }
    }
}

extension SessionCore {
    func establish(
        algorithms: SSHAlgorithms, identity: SSHIdentity, knownHostsPath: String, connectTimeout: Duration,
        keepaliveInterval: Duration?, token: CancelToken
    ) throws(SSHError) -> SSHConnection.ConnectInfo {
        let start = ContinuousClock.now
        let deadline = start + connectTimeout

        // Local files first: a missing known_hosts or key is a configuration error, no network needed.
        if access(knownHostsPath, R_OK) != 0 {
            throw error(.knownHostsUnreadable, "known_hosts",
                        "cannot read known_hosts file \(knownHostsPath): \(String(cString: strerror(errno))); "
                        + "without it no host key can be verified")
        }
        if access(identity.privateKeyPath, R_OK) != 0 {
            throw error(.keyFileUnreadable, "authentication",
                        "cannot read private key \(identity.privateKeyPath): \(String(cString: strerror(errno)))")
        }

        // The plan's algorithm names must all be known to libssh2: method_pref drops unknown names silently.
        guard let s = libssh2_session_init_ex(nil, nil, nil, nil) else {
            throw error(.handshakeFailed, "session init", "libssh2_session_init failed")
        }
        session = s
        for type in MethodType.allCases {
            let names = type.names(in: algorithms)
            let known = SSHSupportedAlgorithms.supported(s, type)
            if names.isEmpty {
                throw error(.unsupportedAlgorithm, "algorithm setup", "the plan allows no \(type.planField)")
            }
            if let bad = names.first(where: { !known.contains($0) }) {
                throw error(.unsupportedAlgorithm, "algorithm setup",
                            "\(type.planField): libssh2 \(LibSSH2.version) does not support \"\(bad)\" "
                            + "(it supports: \(known.joined(separator: ", ")))")
            }
            let rc = names.joined(separator: ",").withCString { libssh2_session_method_pref(s, type.raw, $0) }
            if rc != 0 {
                throw failure(.unsupportedAlgorithm, "algorithm setup",
                              "libssh2 refused the \(type.planField) list \(names.joined(separator: ","))", rc: rc)
            }
        }

        // TCP.
        do {
            sock = try TCP.connect(address: endpoint.address, port: endpoint.port, deadline: deadline)
        } catch {
            switch error {
            case .refused:
                throw self.error(.connectionRefused, "tcp connect", "connection refused (nothing listens on port \(endpoint.port))")
            case .unreachable(let why):
                throw self.error(.hostUnreachable, "tcp connect", why)
            case .timedOut:
                throw self.error(.connectTimeout, "tcp connect", "no answer within \(connectTimeout)")
            case .badAddress(let why):
                throw self.error(.badAddress, "tcp connect", "cannot resolve \"\(endpoint.address)\": \(why)")
            case .other(let why):
                throw self.error(.connectionLost, "tcp connect", why)
            }
        }
        lastActivity = .now

        // Handshake (banner, key exchange) in non-blocking mode.
        libssh2_session_set_blocking(s, 0)
        while true {
            let rc = libssh2_session_handshake(s, sock)
            if rc == 0 { break }
            if rc == LIBSSH2_ERROR_EAGAIN {
                try wait(token, deadline, "handshake", timeoutKind: .connectTimeout)
                continue
            }
            throw handshakeFailure(rc: rc, algorithms: algorithms, deadline: deadline)
        }
        let banner = libssh2_session_banner_get(s).map { String(cString: $0) } ?? ""

        // Host key, before anything is sent that depends on trusting the server.
        let (fingerprint, keyType) = try verifyHostKey(knownHostsPath: knownHostsPath)

        try authenticate(identity: identity, token: token, deadline: deadline)

        let negotiated = NegotiatedAlgorithms(
            kex: method(LIBSSH2_METHOD_KEX), hostKey: method(LIBSSH2_METHOD_HOSTKEY),
            cipherClientToServer: method(LIBSSH2_METHOD_CRYPT_CS), cipherServerToClient: method(LIBSSH2_METHOD_CRYPT_SC),
            macClientToServer: method(LIBSSH2_METHOD_MAC_CS), macServerToClient: method(LIBSSH2_METHOD_MAC_SC),
            compressionClientToServer: method(LIBSSH2_METHOD_COMP_CS),
            compressionServerToClient: method(LIBSSH2_METHOD_COMP_SC))

        if let k = keepaliveInterval {
            let seconds = Int32(clamping: max(1, k.components.seconds))
            keepaliveSeconds = seconds
            libssh2_keepalive_config(s, 1, UInt32(seconds))
        }
        return .init(negotiated: negotiated, fingerprint: fingerprint, hostKeyType: keyType, banner: banner,
                     duration: ContinuousClock.now - start)
    }

    private func method(_ type: Int32) -> String {
        session.flatMap { libssh2_session_methods($0, type) }.map { String(cString: $0) } ?? "?"
    }

    /// A failed handshake: when libssh2 reports a key-exchange failure, probe the server's KEXINIT so
    /// the error names what it offers. Never falls back to other algorithms.
    private func handshakeFailure(rc: Int32, algorithms: SSHAlgorithms, deadline: ContinuousClock.Instant) -> SSHError {
        let base = failure(.handshakeFailed, "handshake", "SSH handshake failed", rc: rc)
        if base.kind == .connectionLost && rc != LIBSSH2_ERROR_SOCKET_DISCONNECT && rc != LIBSSH2_ERROR_SOCKET_RECV {
            return base
        }
        broken = nil
        let probeDeadline = min(deadline, ContinuousClock.now + .seconds(3))
        guard let offer = ServerOffer.probe(address: endpoint.address, port: endpoint.port, deadline: probeDeadline)
        else { return base }
        let mismatches = offer.mismatches(algorithms)
        guard !mismatches.isEmpty else { return base }
        // Report each method once (ciphers/macs apply to both directions).
        var seen = Set<String>()
        var parts: [String] = []
        for (type, allowed, offered) in mismatches where seen.insert(type.planField).inserted {
            parts.append("no common \(type.planField): the plan allows [\(allowed.joined(separator: ", "))], "
                         + "the server offers [\(offered.joined(separator: ", "))]")
        }
        var e = base
        e.kind = .noAlgorithmMatch
        e.message = parts.joined(separator: "; ") + " (migplan never falls back to algorithms the plan does not allow)"
        return e
    }

    private static func keyTypeName(_ type: Int32) -> String {
        switch type {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa"
        case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521"
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519"
        default: return "unknown"
        }
    }

    private static func knownHostKeyMask(_ type: Int32) -> Int32 {
        switch type {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA
        case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519
        default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN
        }
    }

    static func fingerprint(ofKeyBlob blob: [UInt8]) -> String {
        "SHA256:" + SHA256Hasher.hash(blob).base64Unpadded
    }

    /// Checks the server's key with libssh2's knownhost API: the entry for `address` (port 22) or
    /// `[address]:port`, as OpenSSH writes them.
    private func verifyHostKey(knownHostsPath: String) throws(SSHError) -> (String, String) {
        guard let s = session else { throw error(.closed, "host key verification", "no session") }
        var len = 0
        var type: Int32 = 0
        guard let raw = libssh2_session_hostkey(s, &len, &type), len > 0 else {
            throw failure(.handshakeFailed, "host key verification", "the server sent no host key", rc: lastErrno())
        }
        let blob = [UInt8](UnsafeRawBufferPointer(start: raw, count: len))
        let fingerprint = SessionCore.fingerprint(ofKeyBlob: blob)
        let keyType = SessionCore.keyTypeName(type)
        let name = endpoint.knownHostsName
        let addLine = "\(name) \(keyType) \(Data(blob).base64EncodedString())"

        guard let hosts = libssh2_knownhost_init(s) else {
            throw failure(.knownHostsUnreadable, "known_hosts", "libssh2_knownhost_init failed", rc: lastErrno())
        }
        defer { libssh2_knownhost_free(hosts) }
        let n = libssh2_knownhost_readfile(hosts, knownHostsPath, LIBSSH2_KNOWNHOST_FILE_OPENSSH)
        if n < 0 {
            throw failure(.knownHostsUnreadable, "known_hosts",
                          "cannot parse known_hosts file \(knownHostsPath)", rc: n)
        }
        var found: UnsafeMutablePointer<libssh2_knownhost>?
        let mask = LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | SessionCore.knownHostKeyMask(type)
        let check = raw.withMemoryRebound(to: CChar.self, capacity: len) { key in
            libssh2_knownhost_checkp(hosts, name, -1, key, len, mask, &found)
        }
        switch check {
        case LIBSSH2_KNOWNHOST_CHECK_MATCH:
            return (fingerprint, keyType)
        case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
            var stored = "unknown"
            if let k = found?.pointee.key, let data = Data(base64Encoded: String(cString: k)) {
                stored = SessionCore.fingerprint(ofKeyBlob: [UInt8](data))
            }
            throw error(
                .changedHostKey, "host key verification",
                "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for \(name)! Someone could be eavesdropping "
                + "on you right now (possible man-in-the-middle attack), or the host key was just changed. "
                + "The server presents \(keyType) \(fingerprint); \(knownHostsPath) holds \(stored). "
                + "Refusing to connect. If the change is expected, replace the entry for \(name) with: \(addLine)")
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
            throw error(
                .unknownHostKey, "host key verification",
                "host \(name) is not in \(knownHostsPath) (its \(keyType) key fingerprint is \(fingerprint)); "
                + "refusing to connect. After checking the fingerprint out of band, add this line: \(addLine)")
        default:
            throw failure(.knownHostsUnreadable, "host key verification", "libssh2_knownhost_checkp failed",
                          rc: lastErrno())
        }
    }

    private func authenticate(identity: SSHIdentity, token: CancelToken, deadline: ContinuousClock.Instant) throws(SSHError) {
        guard let s = session else { throw error(.closed, "authentication", "no session") }
        let user = endpoint.user
        let userLen = UInt32(user.utf8.count)
        var methods: String?
        while true {
            if let p = libssh2_userauth_list(s, user, userLen) {
                methods = String(cString: p)
                break
            }
            if libssh2_userauth_authenticated(s) != 0 {
                // The server accepted "none": nothing more to do.
                return
            }
            let rc = lastErrno()
            if rc == LIBSSH2_ERROR_EAGAIN {
                try wait(token, deadline, "authentication", timeoutKind: .connectTimeout)
                continue
            }
            throw failure(.authenticationFailed, "authentication", "cannot list the server's authentication methods", rc: rc)
        }
        let offered = (methods ?? "").split(separator: ",").map(String.init)
        guard offered.contains("publickey") else {
            throw error(.passwordOnlyServer, "authentication",
                        "the server offers only [\(offered.joined(separator: ", "))] for user \(user), no publickey; "
                        + "migplan authenticates with keys only and never sends passwords")
        }
        while true {
            let rc: Int32 = identity.privateKeyPath.withCString { priv in
                withOptionalCString(identity.publicKeyPath) { pub in
                    withOptionalCString(identity.passphrase) { pass in
                        libssh2_userauth_publickey_fromfile_ex(s, user, userLen, pub, priv, pass)
                    }
                }
            }
            if rc == 0 { return }
            if rc == LIBSSH2_ERROR_EAGAIN {
                try wait(token, deadline, "authentication", timeoutKind: .connectTimeout)
                continue
            }
            if rc == LIBSSH2_ERROR_FILE {
                throw failure(.keyFileUnreadable, "authentication",
                              "cannot use private key \(identity.privateKeyPath) "
                              + (identity.passphrase == nil ? "(unsupported format, or it needs a passphrase)"
                                 : "(wrong passphrase or unsupported format)"), rc: rc)
            }
            throw failure(.authenticationFailed, "authentication",
                          "the server refused key \(identity.privateKeyPath) for user \(user) on \(endpoint.hostName) "
                          + "(\(endpoint.knownHostsName)); is its public key in the user's authorized_keys?", rc: rc)
        }
    }
}

@inline(__always)
func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    if let s { return s.withCString { body($0) } }
    return body(nil)
}
