internal import CLibSSH2
import Foundation
import MigPlanBasics
#if canImport(Glibc)
import Glibc
#endif

/// A remote-forward listener (OpenSSH `-R 127.0.0.1:PORT`): the host's sshd listens on its own
/// loopback and hands every connection to the controller as a `forwarded-tcpip` channel. Owned by
/// one connection; its C handle is touched only on that connection's thread.
public final class SSHRemoteListener: @unchecked Sendable {
    public let connection: SSHConnection
    /// The address the host listens on (always a loopback address here).
    public let address: String
    /// The port the host's sshd bound (chosen by the server when 0 was asked for).
    public let port: Int
    /// LIBSSH2_LISTENER; nil once cancelled.
    fileprivate var listener: OpaquePointer?

    fileprivate init(connection: SSHConnection, address: String, port: Int, listener: OpaquePointer) {
        self.connection = connection
        self.address = address
        self.port = port
        self.listener = listener
    }

    /// Stops listening (`cancel-tcpip-forward`). Idempotent; errors are ignored (the session may be gone).
    public func cancel() async {
        let core = connection.core
        _ = try? await core.thread.perform({ (token: CancelToken) throws(SSHError) -> Bool in
            guard let l = self.listener, core.session != nil else { return true }
            self.listener = nil
            let deadline = ContinuousClock.now + .seconds(5)
            while libssh2_channel_forward_cancel(l) == LIBSSH2_ERROR_EAGAIN {
                try core.wait(token, deadline, "cancel remote forward")
            }
            return true
        }, closedError: { self.connection.closedError("cancel remote forward") })
    }
}

extension SSHConnection {
    /// Asks the host's sshd to listen on `address:port` (loopback; 0 = a free port of its choice)
    /// and forward connections to this controller. Needs `AllowTcpForwarding yes|remote` and a
    /// matching `PermitListen` on the host.
    public func listenRemote(address: String = "127.0.0.1", port: Int = 0) async throws(SSHError) -> SSHRemoteListener {
        let operation = "remote forward \(address):\(port)"
        let result: (ListenerHandle, Int) = try await perform(operation) { (core, token) throws(SSHError) -> (ListenerHandle, Int) in
            guard let s = core.session else { throw core.error(.closed, operation, "the connection is closed") }
            let deadline = ContinuousClock.now + .seconds(30)
            var bound: Int32 = 0
            var denials = 0
            while true {
                let l = address.withCString { libssh2_channel_forward_listen_ex(s, $0, Int32(port), &bound, 4) }
                if let l { return (ListenerHandle(pointer: l), Int(bound)) }
                let rc = core.lastErrno()
                // libssh2 1.10 takes the first global-request reply for its own: a keepalive's
                // REQUEST_FAILURE (OpenSSH answers keepalive@openssh.com so) arriving first reads
                // as a refusal. A real refusal is the same answer three times.
                if rc == LIBSSH2_ERROR_REQUEST_DENIED && denials < 2 {
                    denials += 1
                    continue
                }
                guard rc == LIBSSH2_ERROR_EAGAIN else {
                    throw core.failure(.channelFailure, operation,
                                       "the server refused to listen on \(address):\(port) (AllowTcpForwarding/PermitListen?)", rc: rc)
                }
                try core.wait(token, deadline, operation)
            }
        }
        return SSHRemoteListener(connection: self, address: address, port: result.1 == 0 ? port : result.1, listener: result.0.pointer)
    }
}

/// A listener handle crossing from the session thread to the caller (used only on that thread).
private struct ListenerHandle: @unchecked Sendable { let pointer: OpaquePointer }

/// What a spliced run moved: the command's exit status and output, and the bytes that crossed
/// the controller in each direction with their SHA-256.
public struct SpliceResult: Sendable {
    public var command: CommandOutput
    /// Whether a connection came in on the listener at all.
    public var accepted: Bool
    /// Source → destination (CRIU's pages): bytes and SHA-256.
    public var forwardBytes: Int64
    public var forwardSHA256: SHA256Hasher.Digest
    /// Destination → source (the page server's answers).
    public var backwardBytes: Int64
    public var backwardSHA256: SHA256Hasher.Digest
    public var duration: Duration
    /// When the source's job started, and when a parked command's input was sent (Unix time).
    public var sourceJobStarted: Double = 0
    public var inputSent: Double = 0
}

/// A `forwarded-tcpip` or `direct-tcpip` channel: one byte stream each way, stepped without blocking.
final class TunnelChannel {
    let core: SessionCore
    let channel: OpaquePointer
    let operation: String
    private(set) var eof = false
    private(set) var inputClosed = false
    private var freed = false

    init(core: SessionCore, channel: OpaquePointer, operation: String) {
        self.core = core
        self.channel = channel
        self.operation = operation
    }

    deinit { if !freed { abandon() } }

    /// Bytes read (0: would block), nil at EOF.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SSHError) -> Int? {
        if eof { return nil }
        let n = libssh2_channel_read_ex(channel, 0, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), buffer.count)
        if n > 0 { return n }
        if n == 0 || Int32(n) == LIBSSH2_ERROR_EAGAIN {
            if libssh2_channel_eof(channel) != 0 { eof = true; return nil }
            return 0
        }
        if Int32(n) == LIBSSH2_ERROR_CHANNEL_CLOSED { eof = true; return nil }
        throw core.failure(.channelFailure, operation, "reading the tunnel failed", rc: Int32(n))
    }

    /// Bytes taken, or nil when libssh2 would block.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SSHError) -> Int? {
        let n = libssh2_channel_write_ex(channel, 0, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
        if n >= 0 { return n }
        if Int32(n) == LIBSSH2_ERROR_EAGAIN { return nil }
        throw core.failure(.channelFailure, operation, "writing into the tunnel failed (the peer closed it?)", rc: Int32(n))
    }

    func sendEOF() throws(SSHError) -> Bool {
        if inputClosed { return true }
        let rc = libssh2_channel_send_eof(channel)
        if rc == 0 || rc == LIBSSH2_ERROR_CHANNEL_CLOSED || rc == LIBSSH2_ERROR_CHANNEL_EOF_SENT { inputClosed = true; return true }
        if rc == LIBSSH2_ERROR_EAGAIN { return false }
        throw core.failure(.channelFailure, operation, "sending EOF into the tunnel failed", rc: rc)
    }

    func close(token: CancelToken, deadline: ContinuousClock.Instant?) throws(SSHError) {
        while true {
            let rc = libssh2_channel_close(channel)
            if rc == 0 || rc == LIBSSH2_ERROR_CHANNEL_CLOSED { break }
            guard rc == LIBSSH2_ERROR_EAGAIN else { break }
            try core.wait(token, deadline, operation)
        }
        while true {
            let rc = libssh2_channel_free(channel)
            if rc != LIBSSH2_ERROR_EAGAIN { break }
            try core.wait(token, deadline, operation)
        }
        freed = true
    }

    func abandon() {
        guard !freed else { return }
        freed = true
        guard core.session != nil else { return }
        _ = libssh2_channel_send_eof(channel)
        if libssh2_channel_free(channel) == LIBSSH2_ERROR_EAGAIN { core.abandonedChannels.append(channel) }
    }
}

/// CRIU's page-server traffic through the controller, inside SSH only: a command on the source
/// (`runc checkpoint --page-server 127.0.0.1:L`) connects to the source's loopback port L, where
/// the source's sshd listens for the controller (remote forwarding); the controller splices that
/// forwarded channel with a `direct-tcpip` channel on the destination's session to the page
/// server on the destination's loopback. Every byte is hashed (SHA-256) on the way.
public enum SSHForwarding {
    private static let enqueueLock = NSLock()

    /// Runs `command` on the listener's connection; the one connection it makes to the listener is
    /// spliced to `targetHost:targetPort` as seen from `destination`'s host. Returns when the
    /// command has exited and both directions of the tunnel have ended. The command's exit status
    /// is returned, not thrown.
    public static func runSpliced(
        command: String, listener: SSHRemoteListener, to destination: SSHConnection,
        targetHost: String = "127.0.0.1", targetPort: Int, bufferSize: Int = 8 << 20, timeout: Duration? = nil,
        parked: SSHParkedCommand? = nil, parkedInput: [UInt8] = Array("go\n".utf8), maxStdout: Int = 64 << 20
    ) async throws(SSHError) -> SpliceResult {
        let source = listener.connection
        guard source !== destination else {
            throw source.core.plainError(.channelFailure, "page-server tunnel", "source and destination must be different connections")
        }
        let srcOp = "page-server tunnel source (\(source.hostName) \(SSHConnection.abbreviate(command)), listening on \(listener.address):\(listener.port))"
        let dstOp = "page-server tunnel destination (\(destination.hostName) \(targetHost):\(targetPort))"
        let forward = RelayRing(capacity: max(bufferSize, 64 * 1024), sourceThread: source.core.thread,
                                destinationThread: destination.core.thread)
        let backward = RelayRing(capacity: 256 * 1024, sourceThread: destination.core.thread,
                                 destinationThread: source.core.thread)
        let srcToken = CancelToken(thread: source.core.thread)
        let dstToken = CancelToken(thread: destination.core.thread)
        let start = ContinuousClock.now
        let deadline = timeout.map { start + $0 }
        @Sendable func failBoth(_ e: SSHError) {
            forward.fail(e)
            backward.fail(e)
        }
        let (srcResult, dstResult) = await withTaskCancellationHandler {
            await withCheckedContinuation {
                (continuation: CheckedContinuation<(Result<SpliceSourceOutcome, SSHError>, Result<SpliceDestinationOutcome, SSHError>), Never>) in
                let pair = RelayPair<SpliceSourceOutcome, SpliceDestinationOutcome>(continuation)
                let srcCore = source.core
                let dstCore = destination.core
                enqueueLock.lock()
                let srcAccepted = srcCore.thread.enqueue {
                    pair.setA(Result { () throws(SSHError) -> SpliceSourceOutcome in
                        do throws(SSHError) {
                            try srcCore.ensureUsable(srcOp)
                            return try sourceSide(core: srcCore, command: command, listener: listener, forward: forward,
                                                  backward: backward, operation: srcOp, token: srcToken, deadline: deadline,
                                                  parked: parked, parkedInput: parkedInput, maxStdout: maxStdout)
                        } catch {
                            failBoth(error)
                            throw error
                        }
                    })
                }
                let dstAccepted = dstCore.thread.enqueue {
                    pair.setB(Result { () throws(SSHError) -> SpliceDestinationOutcome in
                        do throws(SSHError) {
                            try dstCore.ensureUsable(dstOp)
                            return try destinationSide(core: dstCore, host: targetHost, port: targetPort, forward: forward,
                                                       backward: backward, operation: dstOp, token: dstToken, deadline: deadline)
                        } catch {
                            failBoth(error)
                            throw error
                        }
                    })
                }
                enqueueLock.unlock()
                if !srcAccepted {
                    let e = source.closedError(srcOp)
                    failBoth(e)
                    pair.setA(.failure(e))
                }
                if !dstAccepted {
                    let e = destination.closedError(dstOp)
                    failBoth(e)
                    pair.setB(.failure(e))
                }
            }
        } onCancel: {
            srcToken.cancel()
            dstToken.cancel()
        }
        switch (srcResult, dstResult) {
        case (.success(let a), .success(let b)):
            return SpliceResult(command: a.output, accepted: a.accepted, forwardBytes: a.forwardBytes,
                                forwardSHA256: a.forwardSHA256, backwardBytes: b.backwardBytes,
                                backwardSHA256: b.backwardSHA256, duration: ContinuousClock.now - start,
                                sourceJobStarted: a.jobStarted, inputSent: a.inputSent)
        case (.success(let a), .failure(let e)):
            // The command ended (e.g. the dump failed) and the tunnel's other half broke because of it:
            // the command's own failure is the more useful answer.
            if a.output.exitStatus != 0 {
                return SpliceResult(command: a.output, accepted: a.accepted, forwardBytes: a.forwardBytes,
                                    forwardSHA256: a.forwardSHA256, backwardBytes: 0,
                                    backwardSHA256: SHA256Hasher().finalize(), duration: ContinuousClock.now - start)
            }
            throw forward.failed ?? e
        case (.failure(let e), _):
            throw forward.failed ?? e
        }
    }

    struct SpliceSourceOutcome: Sendable {
        var output: CommandOutput
        var accepted: Bool
        var forwardBytes: Int64
        var forwardSHA256: SHA256Hasher.Digest
        var jobStarted: Double = 0
        var inputSent: Double = 0
    }

    struct SpliceDestinationOutcome: Sendable {
        var backwardBytes: Int64
        var backwardSHA256: SHA256Hasher.Digest
    }

    /// On the source connection's thread: the command, the accepted forwarded channel → `forward`
    /// (hashed), `backward` → the forwarded channel.
    static func sourceSide(
        core: SessionCore, command: String, listener: SSHRemoteListener, forward: RelayRing, backward: RelayRing,
        operation: String, token: CancelToken, deadline: ContinuousClock.Instant?,
        parked: SSHParkedCommand?, parkedInput: [UInt8], maxStdout: Int
    ) throws(SSHError) -> SpliceSourceOutcome {
        let jobStarted = Date().timeIntervalSince1970
        var inputSent = 0.0
        guard let l = listener.listener else { throw core.error(.closed, operation, "the remote listener was cancelled") }
        let exec: ExecChannel
        var pendingInput: [UInt8] = []
        if let parked {
            guard let c = parked.take() else { throw core.error(.closed, operation, "the parked command was already used") }
            exec = c
            pendingInput = parkedInput
        } else {
            exec = try ExecChannel.open(core: core, command: command, token: token, deadline: deadline, operation: operation)
        }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        let inputBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(pendingInput.count, 1), alignment: 16)
        defer { inputBuffer.deallocate() }
        pendingInput.withUnsafeBytes { inputBuffer.copyMemory(from: $0) }
        var inputOffset = 0
        let hasher = SHA256Hasher()
        var moved: Int64 = 0
        var stdout: [UInt8] = []
        var stderr: [UInt8] = []
        var tunnel: TunnelChannel?
        var forwardEnded = false
        do throws(SSHError) {
            while true {
                if let e = forward.failed ?? backward.failed { throw e }
                if token.isCancelled { throw core.error(.cancelled, operation, "cancelled") }
                if let deadline, ContinuousClock.now >= deadline { throw core.error(.commandTimeout, operation, "timed out") }
                var progressed = false
                var waitPartner = false
                if parked != nil && !exec.inputClosed {
                    // The parked command's gate: its input, then EOF.
                    if inputOffset < pendingInput.count {
                        let w = try exec.write(UnsafeRawBufferPointer(rebasing: inputBuffer[inputOffset..<pendingInput.count]))
                        if let w, w > 0 { inputOffset += w; progressed = true }
                    } else if try exec.sendEOF() {
                        progressed = true
                        inputSent = Date().timeIntervalSince1970
                    }
                }
                if tunnel == nil && !exec.outputDone {
                    if let c = libssh2_channel_forward_accept(l) {
                        tunnel = TunnelChannel(core: core, channel: c, operation: operation)
                        progressed = true
                    } else {
                        let rc = core.lastErrno()
                        if rc != LIBSSH2_ERROR_EAGAIN {
                            throw core.failure(.channelFailure, operation, "accepting the forwarded connection failed", rc: rc)
                        }
                    }
                }
                if let t = tunnel {
                    // Tunnel → forward ring (hashed).
                    var taken = 0
                    while !forwardEnded && taken < 4 << 20 {
                        let room = forward.writable()
                        if room.count == 0 { waitPartner = true; break }
                        guard let n = try t.read(into: room) else {
                            forwardEnded = true
                            forward.finish()
                            progressed = true
                            break
                        }
                        if n == 0 { break }
                        hasher.update(UnsafeRawBufferPointer(rebasing: room[0..<n]))
                        forward.commit(n)
                        moved += Int64(n)
                        taken += n
                        progressed = true
                    }
                    // Backward ring → tunnel.
                    if !t.inputClosed {
                        while true {
                            let (chunk, ended) = backward.readable()
                            if ended {
                                if try t.sendEOF() { progressed = true }
                                break
                            }
                            if chunk.count == 0 { break }
                            guard let w = try t.write(chunk), w > 0 else { break }
                            backward.consume(w)
                            progressed = true
                        }
                    }
                }
                let o = try exec.read(stream: 0, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                    if stdout.count + b.count > maxStdout {
                        throw core.error(.remoteCommandFailed, operation, "the command wrote more than \(maxStdout) bytes")
                    }
                    stdout.append(contentsOf: b)
                }
                let e = try exec.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                    RelayPipeline.append(&stderr, b)
                }
                if ExecChannel.progressed(o) || ExecChannel.progressed(e) { progressed = true }
                if exec.outputDone {
                    if tunnel == nil {
                        // The command ended without connecting (e.g. the dump failed early).
                        if !forwardEnded { forwardEnded = true; forward.finish() }
                        break
                    }
                    if forwardEnded && (tunnel?.inputClosed ?? true) { break }
                    if forwardEnded && backward.readable().ended { break }
                }
                if progressed {
                    core.markActive()
                } else if waitPartner {
                    try core.waitForPartner(token, deadline, operation)
                } else {
                    try core.wait(token, deadline, operation)
                }
            }
            let status = try exec.finish(token: token, deadline: deadline)
            if let t = tunnel { try t.close(token: token, deadline: deadline) }
            return SpliceSourceOutcome(output: CommandOutput(exitStatus: status, stdout: stdout, stderr: stderr),
                                       accepted: tunnel != nil, forwardBytes: moved, forwardSHA256: hasher.finalize(),
                                       jobStarted: jobStarted, inputSent: inputSent)
        } catch {
            tunnel?.abandon()
            exec.abandon()
            throw error
        }
    }

    /// On the destination connection's thread: `direct-tcpip` to the page server; `forward` → it,
    /// its answers → `backward` (hashed).
    static func destinationSide(
        core: SessionCore, host: String, port: Int, forward: RelayRing, backward: RelayRing,
        operation: String, token: CancelToken, deadline: ContinuousClock.Instant?
    ) throws(SSHError) -> SpliceDestinationOutcome {
        guard let s = core.session else { throw core.error(.closed, operation, "the connection is closed") }
        var opened: OpaquePointer?
        while opened == nil {
            if let e = forward.failed { throw e }
            opened = host.withCString { libssh2_channel_direct_tcpip_ex(s, $0, Int32(port), "127.0.0.1", 22) }
            if opened != nil { break }
            let rc = core.lastErrno()
            guard rc == LIBSSH2_ERROR_EAGAIN else {
                throw core.failure(.channelFailure, operation,
                                   "cannot open a direct-tcpip channel to \(host):\(port) (page server not listening, or PermitOpen?)", rc: rc)
            }
            try core.wait(token, deadline, operation)
        }
        let t = TunnelChannel(core: core, channel: opened!, operation: operation)
        let hasher = SHA256Hasher()
        var moved: Int64 = 0
        var backwardEnded = false
        do throws(SSHError) {
            while true {
                if let e = forward.failed ?? backward.failed { throw e }
                if token.isCancelled { throw core.error(.cancelled, operation, "cancelled") }
                if let deadline, ContinuousClock.now >= deadline { throw core.error(.commandTimeout, operation, "timed out") }
                var progressed = false
                var waitPartner = false
                // Forward ring → page server.
                if !t.inputClosed {
                    var budget = 4 << 20
                    while budget > 0 {
                        let (chunk, ended) = forward.readable()
                        if ended {
                            if try t.sendEOF() { progressed = true }
                            break
                        }
                        if chunk.count == 0 { waitPartner = true; break }
                        guard let w = try t.write(chunk), w > 0 else { break }
                        forward.consume(w)
                        budget -= w
                        progressed = true
                    }
                }
                // Page server → backward ring (hashed).
                while !backwardEnded {
                    let room = backward.writable()
                    if room.count == 0 { break }
                    guard let n = try t.read(into: room) else {
                        backwardEnded = true
                        backward.finish()
                        progressed = true
                        break
                    }
                    if n == 0 { break }
                    hasher.update(UnsafeRawBufferPointer(rebasing: room[0..<n]))
                    backward.commit(n)
                    moved += Int64(n)
                    progressed = true
                }
                if backwardEnded && t.inputClosed { break }
                if progressed {
                    core.markActive()
                } else if waitPartner && backwardEnded {
                    try core.waitForPartner(token, deadline, operation)
                } else {
                    // Our socket (the page server's answers) or the partner's wake-up.
                    try core.wait(token, deadline, operation)
                }
            }
            try t.close(token: token, deadline: deadline)
            return SpliceDestinationOutcome(backwardBytes: moved, backwardSHA256: hasher.finalize())
        } catch {
            t.abandon()
            throw error
        }
    }
}

/// A command started ahead of time (before a container is frozen) that waits on its stdin: the
/// round trips of opening a channel and of sshd starting a shell (0.03–0.4 s each on a loaded
/// host) are paid early; later, `finish(input:)` hands it its input and collects its output.
/// The command should begin with a gate (`read -r go || exit 99`): abandoned, it reads EOF and ends.
public final class SSHParkedCommand: @unchecked Sendable {
    public let connection: SSHConnection
    public let command: String
    /// Touched only on the connection's thread.
    fileprivate var channel: ExecChannel?

    private init(connection: SSHConnection, command: String) {
        self.connection = connection
        self.command = command
    }

    /// Starts `command` and returns once its shell runs (it says so on stderr before the
    /// command proper): a command still starting when its input arrives would put its start-up
    /// back into the freeze (measured: 0.2–0.3 s on a loaded host).
    public static func start(_ command: String, on connection: SSHConnection) async throws(SSHError) -> SSHParkedCommand {
        let parked = SSHParkedCommand(connection: connection, command: command)
        let operation = "park \(SSHConnection.abbreviate(command))"
        let marker = "migplan-parked"
        _ = try await connection.perform(operation) { (core, token) throws(SSHError) -> Bool in
            let deadline = ContinuousClock.now + .seconds(30)
            let exec = try ExecChannel.open(core: core, command: "echo \(marker) >&2; " + command, token: token,
                                            deadline: deadline, operation: operation)
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
            defer { scratch.deallocate() }
            var seen: [UInt8] = []
            let wanted = Array((marker + "\n").utf8)
            do throws(SSHError) {
                // Login scripts may write to stderr before the shell gets to the marker (seen: a
                // pyenv rehash racing in parallel sessions): skipped, up to 64 KiB.
                let wantedLine = Array(("\n" + marker + "\n").utf8)
                func parkedLineSeen() -> Bool {
                    seen.starts(with: wanted) || (seen.count >= wantedLine.count && seen.suffix(wantedLine.count).elementsEqual(wantedLine))
                }
                while !parkedLineSeen() {
                    // Only stderr is read here (one byte at a time past the first line, so nothing
                    // after the marker is taken); stdout stays untouched for the command proper.
                    let limit = seen.isEmpty ? wanted.count : 1
                    let e = try exec.read(stream: 1, into: scratch, limit: limit) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        seen.append(contentsOf: b)
                    }
                    if seen.count > 65536 {
                        throw core.error(.remoteCommandFailed, operation, "the parked command said: \(String(decoding: seen.prefix(300), as: UTF8.self))")
                    }
                    if exec.outputDone || e == .eof {
                        throw core.error(.remoteCommandFailed, operation, "the parked command ended before its input came"
                                         + (seen.isEmpty ? "" : ": \(String(decoding: seen.suffix(300), as: UTF8.self))"))
                    }
                    if !ExecChannel.progressed(e) { try core.wait(token, deadline, operation) }
                }
            } catch {
                exec.abandon()
                throw error
            }
            parked.channel = exec
            return true
        }
        return parked
    }

    /// On the connection's thread: the channel, once (nil when taken or abandoned).
    fileprivate func take() -> ExecChannel? {
        let c = channel
        channel = nil
        return c
    }

    /// Writes `input` to the command's stdin, closes it, waits for the command to end and returns
    /// its exit status and output (stdout up to `maxStdout` bytes).
    public func finish(input: [UInt8], timeout: Duration?, maxStdout: Int = 64 << 20) async throws(SSHError) -> CommandOutput {
        let operation = "run parked \(SSHConnection.abbreviate(command))"
        return try await connection.perform(operation) { (core, token) throws(SSHError) -> CommandOutput in
            guard let exec = self.take() else { throw core.error(.closed, operation, "the parked command was already used") }
            let deadline = timeout.map { ContinuousClock.now + $0 }
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
            defer { scratch.deallocate() }
            let inputBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(input.count, 1), alignment: 16)
            defer { inputBuffer.deallocate() }
            input.withUnsafeBytes { inputBuffer.copyMemory(from: $0) }
            var stdout: [UInt8] = []
            var stderr: [UInt8] = []
            do throws(SSHError) {
                var offset = 0
                while true {
                    if token.isCancelled { throw core.error(.cancelled, operation, "cancelled") }
                    if let deadline, ContinuousClock.now >= deadline { throw core.error(.commandTimeout, operation, "timed out") }
                    var progressed = false
                    if !exec.inputClosed {
                        if offset < input.count {
                            let w = try exec.write(UnsafeRawBufferPointer(rebasing: inputBuffer[offset..<input.count]))
                            if let w, w > 0 { offset += w; progressed = true }
                        } else if try exec.sendEOF() {
                            progressed = true
                        }
                    }
                    if !exec.writePending {
                        let o = try exec.read(stream: 0, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                            if stdout.count + b.count > maxStdout {
                                throw core.error(.remoteCommandFailed, operation, "the command wrote more than \(maxStdout) bytes")
                            }
                            stdout.append(contentsOf: b)
                        }
                        let e = try exec.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                            RelayPipeline.append(&stderr, b)
                        }
                        if ExecChannel.progressed(o) || ExecChannel.progressed(e) { progressed = true }
                    }
                    if exec.outputDone { break }
                    if progressed { core.markActive() } else { try core.wait(token, deadline, operation) }
                }
                let status = try exec.finish(token: token, deadline: deadline)
                return CommandOutput(exitStatus: status, stdout: stdout, stderr: stderr)
            } catch {
                exec.abandon()
                throw error
            }
        }
    }

    /// Ends the command without input (it reads EOF at its gate). Idempotent.
    public func abandon() async {
        _ = try? await connection.perform("abandon parked command") { (_, _) throws(SSHError) -> Bool in
            self.take()?.abandon()
            return true
        }
    }
}
