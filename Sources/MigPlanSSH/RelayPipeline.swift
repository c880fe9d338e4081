import Foundation
import MigPlanBasics
#if canImport(Glibc)
import Glibc
#endif

/// The byte ring between the two threads of a relay: the source's thread writes into it, the
/// destination's thread drains it. Single producer, single consumer; the lock guards the counters
/// only (the regions handed out never overlap).
final class RelayRing: @unchecked Sendable {
    let capacity: Int
    private let storage: UnsafeMutableRawBufferPointer
    private let lock = NSLock()
    private var produced: Int64 = 0
    private var consumed: Int64 = 0
    private var ended = false
    private var failure: SSHError?
    let sourceThread: SessionThread
    let destinationThread: SessionThread

    init(capacity: Int, sourceThread: SessionThread, destinationThread: SessionThread) {
        self.capacity = capacity
        storage = .allocate(byteCount: capacity, alignment: 16)
        self.sourceThread = sourceThread
        self.destinationThread = destinationThread
    }

    deinit { storage.deallocate() }

    /// Contiguous free space for the producer.
    func writable() -> UnsafeMutableRawBufferPointer {
        lock.lock(); defer { lock.unlock() }
        let used = Int(produced - consumed)
        let start = Int(produced % Int64(capacity))
        let n = min(capacity - used, capacity - start)
        return UnsafeMutableRawBufferPointer(rebasing: storage[start..<start + n])
    }

    func commit(_ n: Int) {
        lock.lock()
        produced += Int64(n)
        lock.unlock()
        destinationThread.wake()
    }

    /// Contiguous filled bytes for the consumer, and whether the producer has ended.
    func readable() -> (UnsafeRawBufferPointer, ended: Bool) {
        lock.lock(); defer { lock.unlock() }
        let filled = Int(produced - consumed)
        let start = Int(consumed % Int64(capacity))
        let n = min(filled, capacity - start)
        return (UnsafeRawBufferPointer(rebasing: storage[start..<start + n]), ended && filled == 0)
    }

    func consume(_ n: Int) {
        lock.lock()
        consumed += Int64(n)
        lock.unlock()
        sourceThread.wake()
    }

    func finish() {
        lock.lock()
        ended = true
        lock.unlock()
        destinationThread.wake()
    }

    /// Records the first failure of either side and wakes both.
    func fail(_ e: SSHError) {
        lock.lock()
        if failure == nil { failure = e }
        lock.unlock()
        sourceThread.wake()
        destinationThread.wake()
    }

    var failed: SSHError? {
        lock.lock(); defer { lock.unlock() }
        return failure
    }
}

/// Collects the results of the relay's two jobs and resumes the caller when both are in.
final class RelayPair<A: Sendable, B: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var a: Result<A, SSHError>?
    private var b: Result<B, SSHError>?
    private let continuation: CheckedContinuation<(Result<A, SSHError>, Result<B, SSHError>), Never>

    init(_ continuation: CheckedContinuation<(Result<A, SSHError>, Result<B, SSHError>), Never>) {
        self.continuation = continuation
    }

    func setA(_ r: Result<A, SSHError>) { lock.lock(); a = r; finishIfDone() }
    func setB(_ r: Result<B, SSHError>) { lock.lock(); b = r; finishIfDone() }

    /// Called with the lock held; releases it.
    private func finishIfDone() {
        guard let a, let b else { lock.unlock(); return }
        lock.unlock()
        continuation.resume(returning: (a, b))
    }
}

extension SessionCore {
    /// Waits on the thread's wake-up pipe only (the other side of a relay will wake us), sending
    /// keepalives; bounded by the deadline and one keepalive interval.
    func waitForPartner(_ token: CancelToken, _ deadline: ContinuousClock.Instant?, _ operation: String) throws(SSHError) {
        var timeoutMs: Int32 = 1000
        if let k = keepaliveSeconds {
            idleKeepalive()
            timeoutMs = Int32(k) * 1000
        }
        if let deadline { timeoutMs = min(timeoutMs, TCP.millis(until: deadline)) }
        if token.isCancelled { throw error(.cancelled, operation, "cancelled") }
        var fd = pollfd(fd: thread.wakeFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&fd, 1, timeoutMs)
        if fd.revents != 0 { thread.drainWake() }
        markActive()
        if token.isCancelled { throw error(.cancelled, operation, "cancelled") }
        if let deadline, ContinuousClock.now >= deadline { throw error(.commandTimeout, operation, "timed out") }
    }
}

struct RelaySourceOutcome: Sendable {
    var status: Int32
    var stderr: [UInt8]
    var bytes: Int64
    var sha256: SHA256Hasher.Digest
}

struct RelayDestinationOutcome: Sendable {
    var status: Int32
    var stdout: [UInt8]
    var stderr: [UInt8]
}

enum RelayPipeline {
    static let keep = 1 << 20
    static func append(_ a: inout [UInt8], _ b: UnsafeRawBufferPointer) {
        a.append(contentsOf: b)
        if a.count > 2 * keep { a.removeFirst(a.count - keep) }
    }

    /// The source side, on the source connection's thread: its stdout into the ring, hashed.
    static func source(
        core: SessionCore, command: String, ring: RelayRing, operation: String, token: CancelToken,
        deadline: ContinuousClock.Instant?, progress: SSHProgress?
    ) throws(SSHError) -> RelaySourceOutcome {
        do throws(SSHError) {
            if let e = ring.failed { throw e }
            let channel = try ExecChannel.open(core: core, command: command, token: token, deadline: deadline,
                                               operation: operation)
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
            defer { scratch.deallocate() }
            let hasher = SHA256Hasher()
            var moved: Int64 = 0
            var reported: Int64 = 0
            var stderr: [UInt8] = []
            var endedStdout = false
            do throws(SSHError) {
                while !channel.outputDone {
                    if let e = ring.failed { throw e }
                    if token.isCancelled { throw core.error(.cancelled, operation, "cancelled") }
                    if let deadline, ContinuousClock.now >= deadline { throw core.error(.commandTimeout, operation, "timed out") }
                    var progressed = false
                    var ringFull = false
                    var taken = 0
                    while !channel.stdoutEOF && taken < 4 << 20 {
                        let room = ring.writable()
                        if room.count == 0 { ringFull = true; break }
                        guard let n = try channel.readOnce(stream: 0, into: room) else { break }
                        if n == 0 { break }
                        hasher.update(UnsafeRawBufferPointer(rebasing: room[0..<n]))
                        ring.commit(n)
                        moved += Int64(n)
                        taken += n
                        progressed = true
                    }
                    if channel.stdoutEOF && !endedStdout {
                        endedStdout = true
                        ring.finish()
                        progressed = true
                    }
                    let e = try channel.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        append(&stderr, b)
                    }
                    if ExecChannel.progressed(e) { progressed = true }
                    if let progress, moved - reported >= 1 << 20 {
                        reported = moved
                        progress(moved)
                    }
                    if channel.outputDone { break }
                    if progressed {
                        core.markActive()
                    } else if ringFull {
                        try core.waitForPartner(token, deadline, operation)
                    } else {
                        try core.wait(token, deadline, operation)
                    }
                }
                if !endedStdout { ring.finish() }
                let status = try channel.finish(token: token, deadline: deadline)
                progress?(moved)
                return RelaySourceOutcome(status: status, stderr: stderr, bytes: moved, sha256: hasher.finalize())
            } catch {
                channel.abandon()
                throw error
            }
        } catch {
            ring.fail(error)
            throw error
        }
    }

    /// The destination side, on the destination connection's thread: the ring into its stdin.
    static func destination(
        core: SessionCore, command: String, ring: RelayRing, operation: String, token: CancelToken,
        deadline: ContinuousClock.Instant?
    ) throws(SSHError) -> RelayDestinationOutcome {
        do throws(SSHError) {
            if let e = ring.failed { throw e }
            let channel = try ExecChannel.open(core: core, command: command, token: token, deadline: deadline,
                                               operation: operation)
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
            defer { scratch.deallocate() }
            var stdout: [UInt8] = []
            var stderr: [UInt8] = []
            do throws(SSHError) {
                while true {
                    if let e = ring.failed { throw e }
                    if token.isCancelled { throw core.error(.cancelled, operation, "cancelled") }
                    if let deadline, ContinuousClock.now >= deadline { throw core.error(.commandTimeout, operation, "timed out") }
                    var progressed = false
                    var waitingForData = false
                    if !channel.inputClosed {
                        var budget = 4 << 20
                        while budget > 0 {
                            let (chunk, ended) = ring.readable()
                            if ended {
                                if try channel.sendEOF() { progressed = true }
                                break
                            }
                            if chunk.count == 0 { waitingForData = true; break }
                            guard let w = try channel.write(chunk) else { break }
                            if channel.inputClosed { break }
                            ring.consume(w)
                            budget -= w
                            progressed = true
                        }
                        if channel.remoteStoppedReading && !ring.readable().ended {
                            throw core.error(.remoteCommandFailed, operation,
                                             "the destination command stopped reading its input")
                        }
                    }
                    if !channel.writePending {
                        let o = try channel.read(stream: 0, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                            append(&stdout, b)
                        }
                        let e = try channel.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                            append(&stderr, b)
                        }
                        if ExecChannel.progressed(o) || ExecChannel.progressed(e) { progressed = true }
                    }
                    if channel.outputDone {
                        if !ring.readable().ended {
                            throw core.error(.remoteCommandFailed, operation,
                                             "the destination command ended before reading all of its input")
                        }
                        break
                    }
                    if progressed {
                        core.markActive()
                    } else if waitingForData {
                        // Wakes on the source's commit (wake pipe) or on our socket (output).
                        try core.wait(token, deadline, operation)
                        core.markActive()
                    } else {
                        try core.wait(token, deadline, operation)
                    }
                }
                let status = try channel.finish(token: token, deadline: deadline)
                return RelayDestinationOutcome(status: status, stdout: stdout, stderr: stderr)
            } catch {
                channel.abandon()
                throw error
            }
        } catch {
            ring.fail(error)
            throw error
        }
    }
}
