internal import CLibSSH2
import Foundation
import MigPlanBasics
#if canImport(Glibc)
import Glibc
#endif

/// The C state of one connection: a LIBSSH2_SESSION and its socket. Touched only on the
/// connection's `SessionThread` (or, during a relay, on the thread that borrowed it while its own
/// thread is parked), which is what makes `@unchecked Sendable` true.
final class SessionCore: @unchecked Sendable {
    let endpoint: SSHEndpoint
    let thread: SessionThread
    var session: OpaquePointer?
    var sock: Int32 = -1
    var keepaliveSeconds: Int32?
    /// Last time the socket showed any sign of life (readable, writable, hung up).
    var lastActivity = ContinuousClock.now
    /// Set when the connection is unusable (socket error, dead peer); later jobs fail with it.
    var broken: SSHError?
    /// Channels given up on (timeout, cancellation) whose CLOSE the server has not answered yet.
    var abandonedChannels: [OpaquePointer] = []

    /// Receive window for channels: large so downloads are not throttled by window adjusts.
    static let channelWindow: UInt32 = 8 * 1024 * 1024
    static let channelPacket: UInt32 = 32768

    init(endpoint: SSHEndpoint, thread: SessionThread) {
        self.endpoint = endpoint
        self.thread = thread
    }

    /// The dead-peer limit: three keepalive intervals without any sign of life.
    var deadPeerLimit: Duration? { keepaliveSeconds.map { .seconds(Int64($0) * 3) } }

    // MARK: errors

    func error(_ kind: SSHError.Kind, _ operation: String, _ message: String, code: Int32? = nil) -> SSHError {
        var e = SSHError(kind, hostName: endpoint.hostName, address: endpoint.address, port: endpoint.port,
                         operation: operation, message: message)
        if let session {
            var msg: UnsafeMutablePointer<CChar>?
            var len: Int32 = 0
            let rc = libssh2_session_last_error(session, &msg, &len, 0)
            if code != nil {
                e.libssh2Code = code ?? rc
                if let msg, len > 0 { e.libssh2Message = String(cString: msg) }
            }
        }
        return e
    }

    /// An error built without touching the session (safe from any thread).
    func plainError(_ kind: SSHError.Kind, _ operation: String, _ message: String) -> SSHError {
        SSHError(kind, hostName: endpoint.hostName, address: endpoint.address, port: endpoint.port,
                 operation: operation, message: message)
    }

    /// An error for libssh2 return code `rc`: socket-level codes become `connectionLost` (and the
    /// connection is marked broken), anything else `kind`.
    func failure(_ kind: SSHError.Kind, _ operation: String, _ message: String, rc: Int32) -> SSHError {
        switch rc {
        case LIBSSH2_ERROR_SOCKET_DISCONNECT, LIBSSH2_ERROR_SOCKET_RECV, LIBSSH2_ERROR_SOCKET_SEND,
             LIBSSH2_ERROR_SOCKET_NONE, LIBSSH2_ERROR_SOCKET_TIMEOUT:
            let e = error(.connectionLost, operation, "the connection was lost", code: rc)
            broken = e
            return e
        default:
            return error(kind, operation, message, code: rc)
        }
    }

    func lastErrno() -> Int32 { session.map { libssh2_session_last_errno($0) } ?? LIBSSH2_ERROR_SOCKET_NONE }

    /// Frees abandoned channels the server has closed by now (one non-blocking attempt each).
    func reapAbandoned() {
        abandonedChannels.removeAll { libssh2_channel_free($0) != LIBSSH2_ERROR_EAGAIN }
    }

    /// Notes that the peer answered or an operation moved forward (resets the dead-peer clock).
    @inline(__always)
    func markActive() { lastActivity = .now }

    func ensureUsable(_ operation: String) throws(SSHError) {
        reapAbandoned()
        markActive()
        if let broken {
            var e = broken
            e.operation = operation
            e.message = "connection unusable since an earlier failure: " + broken.message
            throw e
        }
        if session == nil { throw error(.closed, operation, "the connection is closed") }
    }

    // MARK: waiting

    /// After libssh2 answered EAGAIN on one or more sessions: wait until one of their sockets can
    /// make progress in the direction libssh2 is blocked on (`libssh2_session_block_directions`),
    /// the deadline passes, the job is cancelled, or a peer stays silent past its dead-peer limit.
    /// Keepalives are sent from here while waiting.
    static func wait(
        _ cores: [SessionCore], token: CancelToken, deadline: ContinuousClock.Instant?, operation: String,
        timeoutKind: SSHError.Kind = .commandTimeout
    ) throws(SSHError) {
        let primary = cores[0]
        var timeoutMs: Int32 = -1
        func lower(_ ms: Int32) { timeoutMs = timeoutMs < 0 ? max(0, ms) : min(timeoutMs, max(0, ms)) }
        var fds: [pollfd] = []
        for core in cores {
            if let k = core.keepaliveSeconds, let s = core.session {
                var next: Int32 = 0
                if libssh2_keepalive_send(s, &next) == 0 { lower(max(next, 1) * 1000) } else { lower(Int32(k) * 1000) }
                if let limit = core.deadPeerLimit { lower(TCP.millis(until: core.lastActivity + limit)) }
            }
            let dirs = core.session.map { libssh2_session_block_directions($0) } ?? 0
            var events: Int32 = 0
            if dirs & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int32(POLLIN) }
            if dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int32(POLLOUT) }
            if events == 0 { events = Int32(POLLIN) }
            fds.append(pollfd(fd: core.sock, events: Int16(events), revents: 0))
        }
        fds.append(pollfd(fd: primary.thread.wakeFD, events: Int16(POLLIN), revents: 0))
        if let deadline { lower(TCP.millis(until: deadline)) }
        if token.isCancelled { throw primary.error(.cancelled, operation, "cancelled") }
        let n = poll(&fds, nfds_t(fds.count), timeoutMs)
        if n < 0 && errno != EINTR {
            throw primary.error(.connectionLost, operation, "poll: \(String(cString: strerror(errno)))")
        }
        let now = ContinuousClock.now
        if fds[fds.count - 1].revents != 0 { primary.thread.drainWake() }
        if token.isCancelled { throw primary.error(.cancelled, operation, "cancelled") }
        for (i, core) in cores.enumerated() where fds[i].revents != 0 { core.lastActivity = now }
        if let deadline, now >= deadline {
            let message = timeoutKind == .connectTimeout
                ? "no answer within the connect timeout" : "timed out"
            throw primary.error(timeoutKind, operation, message)
        }
        for core in cores {
            if let limit = core.deadPeerLimit, now - core.lastActivity > limit {
                let e = core.error(
                    .peerUnresponsive, operation,
                    "no sign of life from the peer for \(limit) (keepalive every \(core.keepaliveSeconds ?? 0)s unanswered)")
                core.broken = e
                throw e
            }
        }
    }

    func wait(_ token: CancelToken, _ deadline: ContinuousClock.Instant?, _ operation: String,
              timeoutKind: SSHError.Kind = .commandTimeout) throws(SSHError) {
        try SessionCore.wait([self], token: token, deadline: deadline, operation: operation, timeoutKind: timeoutKind)
    }

    /// Sends a keepalive if one is due (the idle tick of the session thread).
    func idleKeepalive() {
        guard let session, broken == nil, keepaliveSeconds != nil else { return }
        var next: Int32 = 0
        _ = libssh2_keepalive_send(session, &next)
    }

    // MARK: teardown

    /// Says goodbye and frees the session (bounded: blocking mode with a 1 s timeout).
    func shutdown() {
        if let session {
            libssh2_session_set_timeout(session, 1000)
            libssh2_session_set_blocking(session, 1)
            if broken == nil {
                _ = libssh2_session_disconnect_ex(session, 11 /* SSH_DISCONNECT_BY_APPLICATION */, "migplan done", "")
            }
            libssh2_session_free(session)
            self.session = nil
        }
        if sock >= 0 {
            Glibc.close(sock)
            sock = -1
        }
    }
}
