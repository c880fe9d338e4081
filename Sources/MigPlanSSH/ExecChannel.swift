internal import CLibSSH2
import Foundation
import MigPlanBasics

/// One exec channel on a session, stepped without blocking by a pump loop. On the session's thread.
final class ExecChannel {
    let core: SessionCore
    let channel: OpaquePointer
    let operation: String
    private(set) var stdoutEOF = false
    private(set) var stderrEOF = false
    /// We sent EOF, or the remote side stopped accepting input.
    private(set) var inputClosed = false
    private(set) var remoteStoppedReading = false
    /// The last write left a partial packet in libssh2's send buffer: only that write may continue.
    private(set) var writePending = false
    private var freed = false

    var outputDone: Bool { stdoutEOF && stderrEOF }

    private init(core: SessionCore, channel: OpaquePointer, operation: String) {
        self.core = core
        self.channel = channel
        self.operation = operation
    }

    /// Opens a session channel and starts `command` through the remote user's shell.
    static func open(core: SessionCore, command: String, token: CancelToken, deadline: ContinuousClock.Instant?,
                     operation: String) throws(SSHError) -> ExecChannel {
        guard let s = core.session else { throw core.error(.closed, operation, "the connection is closed") }
        var opened: OpaquePointer?
        while opened == nil {
            opened = libssh2_channel_open_ex(s, "session", 7, SessionCore.channelWindow, SessionCore.channelPacket, nil, 0)
            if opened != nil { break }
            let rc = core.lastErrno()
            guard rc == LIBSSH2_ERROR_EAGAIN else {
                throw core.failure(.channelFailure, operation, "cannot open a session channel", rc: rc)
            }
            try core.wait(token, deadline, operation)
        }
        let exec = ExecChannel(core: core, channel: opened!, operation: operation)
        do throws(SSHError) {
            while true {
                let rc = command.withCString {
                    libssh2_channel_process_startup(exec.channel, "exec", 4, $0, UInt32(command.utf8.count))
                }
                if rc == 0 { break }
                guard rc == LIBSSH2_ERROR_EAGAIN else {
                    throw core.failure(.channelFailure, operation, "the server refused to start the command", rc: rc)
                }
                try core.wait(token, deadline, operation)
            }
        } catch {
            exec.abandon()
            throw error
        }
        return exec
    }

    deinit { if !freed { abandon() } }

    enum ReadOutcome { case data, blocked, eof, idle }

    /// Whether a read outcome moved anything forward.
    static func progressed(_ o: ReadOutcome) -> Bool { o == .data || o == .eof }

    /// Reads what is available on `stream` (0 stdout, 1 stderr), up to `limit` bytes, handing it to
    /// `deliver`. Returns whether bytes came, libssh2 would block, or the stream ended.
    func read(stream: Int32, into buffer: UnsafeMutableRawBufferPointer, limit: Int,
              deliver: (UnsafeRawBufferPointer) throws(SSHError) -> Void) throws(SSHError) -> ReadOutcome {
        if stream == 0 ? stdoutEOF : stderrEOF { return .idle }
        var total = 0
        while total < limit {
            let n = libssh2_channel_read_ex(channel, stream, buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                            buffer.count)
            if n > 0 {
                try deliver(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                total += n
                continue
            }
            if n == 0 {
                if libssh2_channel_eof(channel) != 0 {
                    if stream == 0 { stdoutEOF = true } else { stderrEOF = true }
                    return total > 0 ? .data : .eof
                }
                return total > 0 ? .data : .blocked
            }
            if Int32(n) == LIBSSH2_ERROR_EAGAIN { return total > 0 ? .data : .blocked }
            throw core.failure(.channelFailure, operation,
                               "reading the command's \(stream == 0 ? "stdout" : "stderr") failed", rc: Int32(n))
        }
        return .data
    }

    /// One read of `stream` into `buffer`: the bytes read, 0 when libssh2 would block, nil when the
    /// stream has ended.
    func readOnce(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SSHError) -> Int? {
        if stream == 0 ? stdoutEOF : stderrEOF { return nil }
        let n = libssh2_channel_read_ex(channel, stream, buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                        buffer.count)
        if n > 0 { return n }
        if n == 0 {
            if libssh2_channel_eof(channel) != 0 {
                if stream == 0 { stdoutEOF = true } else { stderrEOF = true }
                return nil
            }
            return 0
        }
        if Int32(n) == LIBSSH2_ERROR_EAGAIN { return 0 }
        throw core.failure(.channelFailure, operation,
                           "reading the command's \(stream == 0 ? "stdout" : "stderr") failed", rc: Int32(n))
    }

    /// Writes to the command's stdin. Returns the bytes taken, or nil when libssh2 would block.
    /// When the remote side no longer accepts input, marks `inputClosed` and returns 0.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SSHError) -> Int? {
        let n = libssh2_channel_write_ex(channel, 0, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
        if n >= 0 {
            writePending = false
            return n
        }
        let rc = Int32(n)
        if rc == LIBSSH2_ERROR_EAGAIN {
            if let s = core.session { writePending = libssh2_session_block_directions(s) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 }
            return nil
        }
        if rc == LIBSSH2_ERROR_CHANNEL_CLOSED || rc == LIBSSH2_ERROR_CHANNEL_EOF_SENT {
            writePending = false
            inputClosed = true
            remoteStoppedReading = true
            return 0
        }
        throw core.failure(.channelFailure, operation, "writing to the command's stdin failed", rc: rc)
    }

    /// Sends EOF on stdin. False when libssh2 would block.
    func sendEOF() throws(SSHError) -> Bool {
        if inputClosed { return true }
        let rc = libssh2_channel_send_eof(channel)
        if rc == 0 { inputClosed = true; return true }
        if rc == LIBSSH2_ERROR_EAGAIN { return false }
        if rc == LIBSSH2_ERROR_CHANNEL_CLOSED || rc == LIBSSH2_ERROR_CHANNEL_EOF_SENT {
            inputClosed = true
            return true
        }
        throw core.failure(.channelFailure, operation, "sending EOF to the command failed", rc: rc)
    }

    /// Closes the channel after the output ended and returns the exit status (128 + signal number
    /// when the command was killed by a signal).
    func finish(token: CancelToken, deadline: ContinuousClock.Instant?) throws(SSHError) -> Int32 {
        while true {
            let rc = libssh2_channel_close(channel)
            if rc == 0 { break }
            guard rc == LIBSSH2_ERROR_EAGAIN else {
                throw core.failure(.channelFailure, operation, "closing the channel failed", rc: rc)
            }
            try core.wait(token, deadline, operation)
        }
        while true {
            let rc = libssh2_channel_wait_closed(channel)
            if rc == 0 { break }
            guard rc == LIBSSH2_ERROR_EAGAIN else {
                throw core.failure(.channelFailure, operation, "waiting for the channel to close failed", rc: rc)
            }
            try core.wait(token, deadline, operation)
        }
        var status = libssh2_channel_get_exit_status(channel)
        var signal: UnsafeMutablePointer<CChar>?
        var signalLength = 0
        if libssh2_channel_get_exit_signal(channel, &signal, &signalLength, nil, nil, nil, nil) == 0, let signal {
            let name = String(cString: signal)
            if let s = core.session { libssh2_free(s, signal) }
            if !name.isEmpty { status = 128 + ExecChannel.signalNumber(name) }
        }
        while true {
            let rc = libssh2_channel_free(channel)
            if rc == 0 { break }
            guard rc == LIBSSH2_ERROR_EAGAIN else { break }
            try core.wait(token, deadline, operation)
        }
        freed = true
        return status
    }

    /// After an error, timeout or cancellation: sends EOF and CLOSE without waiting. OpenSSH sends
    /// its CLOSE only when the remote command has exited (libssh2 1.10 cannot send a "signal"
    /// request), so the channel is parked on the session and freed by `reapAbandoned()` once the
    /// server has closed it; the connection stays usable for new channels meanwhile.
    func abandon() {
        guard !freed else { return }
        freed = true
        guard core.session != nil else { return }
        if !inputClosed { _ = libssh2_channel_send_eof(channel) }
        let rc = libssh2_channel_free(channel)
        if rc == LIBSSH2_ERROR_EAGAIN { core.abandonedChannels.append(channel) }
    }

    static func signalNumber(_ name: String) -> Int32 {
        let table: [String: Int32] = [
            "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
            "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
        ]
        return table[name] ?? 127
    }
}
