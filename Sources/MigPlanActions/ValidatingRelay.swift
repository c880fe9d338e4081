import Foundation
import MigPlanBasics
import MigPlanSSH

/// A bounded in-memory pipe between two SSH connection threads: the source's stdout sink writes
/// into it, the destination's stdin source reads from it. Either side can abort it, which makes
/// the other side fail instead of blocking.
final class BytePipe: SSHByteSink, SSHByteSource, @unchecked Sendable {
    private let condition = NSCondition()
    private var chunks: [[UInt8]] = []
    private var head: [UInt8] = []
    private var headOffset = 0
    private var buffered = 0
    private var closed = false
    private var aborted: String?
    private let capacity: Int

    init(capacity: Int = 32 << 20) { self.capacity = capacity }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        condition.lock()
        defer { condition.unlock() }
        while buffered >= capacity && aborted == nil { condition.wait() }
        if let aborted { throw SSHLocalIOError("relay aborted: \(aborted)") }
        chunks.append(Array(bytes))
        buffered += bytes.count
        condition.broadcast()
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        condition.lock()
        defer { condition.unlock() }
        while headOffset >= head.count && chunks.isEmpty && !closed && aborted == nil { condition.wait() }
        if let aborted { throw SSHLocalIOError("relay aborted: \(aborted)") }
        if headOffset >= head.count {
            if chunks.isEmpty { return 0 }  // closed and drained
            head = chunks.removeFirst()
            headOffset = 0
        }
        let n = min(buffer.count, head.count - headOffset)
        head.withUnsafeBytes { src in
            buffer.baseAddress!.copyMemory(from: src.baseAddress! + headOffset, byteCount: n)
        }
        headOffset += n
        buffered -= n
        condition.broadcast()
        return n
    }

    /// The writer is done: the reader sees the end after the buffered bytes.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    func abort(_ why: String) {
        condition.lock()
        if aborted == nil { aborted = why }
        condition.broadcast()
        condition.unlock()
    }
}

/// The source's stdout sink: validates the archive in-stream (inflating it when compressed) and
/// passes the bytes on to the pipe. A refused entry stops the stream at once.
final class ValidatingSink: SSHByteSink, @unchecked Sendable {
    let pipe: BytePipe
    let validator: ArchiveStreamValidator
    private let lock = NSLock()
    private var rejection: ArchiveRejection?

    init(pipe: BytePipe, validator: ArchiveStreamValidator) {
        self.pipe = pipe
        self.validator = validator
    }

    var refused: ArchiveRejection? { lock.withLock { rejection } }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        do {
            try validator.feed(bytes)
        } catch {
            lock.withLock { rejection = error }
            pipe.abort(error.description)
            throw error
        }
        try pipe.write(bytes)
    }

    func finish() throws(ArchiveRejection) {
        do {
            try validator.finish()
        } catch {
            lock.withLock { rejection = error }
            throw error
        }
    }
}

/// What a validated relay moved.
struct ValidatedRelayResult: Sendable {
    var bytes: Int64
    var sha256: String
    var duration: Duration
    var entries: Int
    /// What the destination command wrote to stderr (the page-server receiver reports its manifest
    /// digest there).
    var destinationStderr: String = ""
}

/// Streams `sourceCommand`'s stdout on one host into `destinationCommand`'s stdin on another,
/// through the controller: each side on its own connection thread, joined by a bounded pipe;
/// the controller hashes (SHA-256) and validates the tar stream as it passes. Neither host
/// holds credentials for the other.
enum ValidatingRelay {
    static func run(
        from source: SSHConnection, _ sourceCommand: String,
        to destination: SSHConnection, _ destinationCommand: String,
        compressed: Bool, timeout: Duration?, what: String = "the archive", progress: @escaping SSHProgress = { _ in }
    ) async throws -> ValidatedRelayResult {
        let pipe = BytePipe()
        let validator = try ArchiveStreamValidator(compressed: compressed)
        let sink = ValidatingSink(pipe: pipe, validator: validator)
        let started = ContinuousClock.now
        async let sent: Result<StreamResult, any Error> = sendSide(source, sourceCommand, sink: sink, pipe: pipe,
                                                                   timeout: timeout, progress: progress)
        async let received: Result<StreamResult, any Error> = receiveSide(destination, destinationCommand, pipe: pipe,
                                                                          timeout: timeout)
        let (s, r) = await (sent, received)
        if let refused = sink.refused { throw ActionError(.archiveRefused, host: source.hostName, refused.description) }
        // A source that exited non-zero is what failed (its stderr says why), not the destination
        // that then saw its input aborted: checked before the destination's result.
        let src: StreamResult
        switch s {
        case .success(let v) where v.exitStatus != 0:
            throw ActionError(.commandFailed, host: source.hostName,
                              "sending \(what) failed (exit \(v.exitStatus)): \(v.stderrText.suffix(500))")
        case .success(let v): src = v
        case .failure(let e): throw ActionError.wrap(e, host: source.hostName)
        }
        let dst: StreamResult
        switch r {
        case .success(let v): dst = v
        case .failure(let e): throw ActionError.wrap(e, host: destination.hostName)
        }
        guard dst.exitStatus == 0 else {
            throw ActionError(.commandFailed, host: destination.hostName,
                              "receiving \(what) failed (exit \(dst.exitStatus)): \(dst.stderrText.suffix(800))")
        }
        guard src.stdoutBytes == dst.stdinBytes, src.stdoutSHA256 == dst.stdinSHA256, !dst.inputTruncated else {
            throw ActionError(.transport, host: destination.hostName,
                              "relay mismatch: sent \(src.stdoutBytes) bytes, delivered \(dst.stdinBytes)", retryable: true)
        }
        return ValidatedRelayResult(bytes: src.stdoutBytes, sha256: src.stdoutSHA256.hex,
                                    duration: ContinuousClock.now - started, entries: validator.entries,
                                    destinationStderr: dst.stderrText)
    }

    private static func sendSide(_ c: SSHConnection, _ command: String, sink: ValidatingSink, pipe: BytePipe,
                                 timeout: Duration?, progress: @escaping SSHProgress) async -> Result<StreamResult, any Error> {
        do {
            let r = try await c.runStreaming(command, stdout: sink, timeout: timeout, progress: progress)
            if r.exitStatus != 0 {
                pipe.abort("the source command exited \(r.exitStatus)")
                return .success(r)
            }
            do {
                try sink.finish()
            } catch {
                pipe.abort(error.description)
                return .failure(error)
            }
            pipe.close()
            return .success(r)
        } catch {
            pipe.abort("the source side failed")
            return .failure(error)
        }
    }

    private static func receiveSide(_ c: SSHConnection, _ command: String, pipe: BytePipe,
                                    timeout: Duration?) async -> Result<StreamResult, any Error> {
        do {
            let r = try await c.runStreaming(command, stdin: pipe, timeout: timeout)
            if r.exitStatus != 0 || r.inputTruncated { pipe.abort("the destination command ended early") }
            return .success(r)
        } catch {
            pipe.abort("the destination side failed")
            return .failure(error)
        }
    }
}
