import Foundation
import MigPlanBasics

/// Streams the stdout of a command on one host into the stdin of a command on another, through
/// the controller, hashing the bytes on the way (e.g. `tar c` on the source into `tar x` on the
/// destination). Both commands' exit statuses are checked; errors say which side failed.
public enum SSHRelay {
    /// Serialises the enqueueing of relay jobs so that two relays over the same pair of
    /// connections are queued in the same order on both threads (no lock-order deadlock).
    private static let enqueueLock = NSLock()

    public static func pipe(
        from source: SSHConnection, command sourceCommand: String,
        to destination: SSHConnection, command destinationCommand: String,
        bufferSize: Int = 8 << 20, timeout: Duration? = nil, progress: SSHProgress? = nil
    ) async throws(SSHError) -> RelayResult {
        let operation = "relay \(source.hostName) \(SSHConnection.abbreviate(sourceCommand)) -> "
            + "\(destination.hostName) \(SSHConnection.abbreviate(destinationCommand))"
        let deadlineOffset = timeout
        let body: @Sendable (CancelToken) throws(SSHError) -> RelayResult = { (token: CancelToken) throws(SSHError) -> RelayResult in
            try source.core.ensureUsable(operation)
            try destination.core.ensureUsable(operation)
            return try relayLoop(
                source: source.core, sourceCommand: sourceCommand, destination: destination.core,
                destinationCommand: destinationCommand, bufferSize: max(bufferSize, 64 * 1024),
                operation: operation, token: token, deadline: deadlineOffset.map { ContinuousClock.now + $0 },
                progress: progress)
        }
        if source === destination {
            return try await source.core.thread.perform(body, closedError: { source.closedError(operation) })
        }
        // Two threads: the source connection's thread reads and hashes, the destination's writes;
        // they meet in a ring of `bufferSize` bytes (decryption and encryption on two cores).
        let ring = RelayRing(capacity: max(bufferSize, 64 * 1024), sourceThread: source.core.thread,
                             destinationThread: destination.core.thread)
        let srcOp = "relay source (\(source.hostName) \(SSHConnection.abbreviate(sourceCommand)))"
        let dstOp = "relay destination (\(destination.hostName) \(SSHConnection.abbreviate(destinationCommand)))"
        let srcToken = CancelToken(thread: source.core.thread)
        let dstToken = CancelToken(thread: destination.core.thread)
        let start = ContinuousClock.now
        let deadline = timeout.map { start + $0 }
        let (srcResult, dstResult) = await withTaskCancellationHandler {
            await withCheckedContinuation {
                (continuation: CheckedContinuation<(Result<RelaySourceOutcome, SSHError>, Result<RelayDestinationOutcome, SSHError>), Never>) in
                let pair = RelayPair<RelaySourceOutcome, RelayDestinationOutcome>(continuation)
                let srcCore = source.core
                let dstCore = destination.core
                // Both jobs are queued under one lock so that relays sharing connections are queued in
                // the same order on every thread (a relay never waits for a partner queued behind another).
                enqueueLock.lock()
                let srcAccepted = srcCore.thread.enqueue {
                    pair.setA(Result { () throws(SSHError) -> RelaySourceOutcome in
                        do throws(SSHError) { try srcCore.ensureUsable(srcOp) } catch { ring.fail(error); throw error }
                        return try RelayPipeline.source(core: srcCore, command: sourceCommand, ring: ring, operation: srcOp,
                                                        token: srcToken, deadline: deadline, progress: progress)
                    })
                }
                let dstAccepted = dstCore.thread.enqueue {
                    pair.setB(Result { () throws(SSHError) -> RelayDestinationOutcome in
                        do throws(SSHError) { try dstCore.ensureUsable(dstOp) } catch { ring.fail(error); throw error }
                        return try RelayPipeline.destination(core: dstCore, command: destinationCommand, ring: ring,
                                                             operation: dstOp, token: dstToken, deadline: deadline)
                    })
                }
                enqueueLock.unlock()
                if !srcAccepted {
                    let e = source.closedError(srcOp)
                    ring.fail(e)
                    pair.setA(.failure(e))
                }
                if !dstAccepted {
                    let e = destination.closedError(dstOp)
                    ring.fail(e)
                    pair.setB(.failure(e))
                }
            }
        } onCancel: {
            srcToken.cancel()
            dstToken.cancel()
        }
        // The first failure is the cause; the other side then failed because of it.
        let cause = ring.failed
        let src: RelaySourceOutcome
        let dst: RelayDestinationOutcome
        switch (srcResult, dstResult) {
        case (.success(let a), .success(let b)):
            src = a
            dst = b
        case (.failure(let e), _), (_, .failure(let e)):
            throw cause ?? e
        }
        let srcOutput = CommandOutput(exitStatus: src.status, stdout: [], stderr: src.stderr)
        let dstOutput = CommandOutput(exitStatus: dst.status, stdout: dst.stdout, stderr: dst.stderr)
        if src.status != 0 {
            throw source.core.plainError(.remoteCommandFailed, srcOp,
                                    "the source command exited with status \(src.status) after \(src.bytes) bytes: "
                                    + srcOutput.stderrTail(maxBytes: 2000))
        }
        if dst.status != 0 {
            throw destination.core.plainError(.remoteCommandFailed, dstOp,
                                         "the destination command exited with status \(dst.status) after \(src.bytes) bytes: "
                                         + dstOutput.stderrTail(maxBytes: 2000))
        }
        return RelayResult(bytes: src.bytes, sha256: src.sha256, duration: ContinuousClock.now - start,
                           source: srcOutput, destination: dstOutput)
    }

    /// A relay between two commands of one connection: one thread drives both channels.
    static func relayLoop(
        source: SessionCore, sourceCommand: String, destination: SessionCore, destinationCommand: String,
        bufferSize: Int, operation: String, token: CancelToken, deadline: ContinuousClock.Instant?,
        progress: SSHProgress?
    ) throws(SSHError) -> RelayResult {
        let start = ContinuousClock.now
        let srcOp = "relay source (\(source.endpoint.hostName) \(SSHConnection.abbreviate(sourceCommand)))"
        let dstOp = "relay destination (\(destination.endpoint.hostName) \(SSHConnection.abbreviate(destinationCommand)))"
        let dst = try ExecChannel.open(core: destination, command: destinationCommand, token: token, deadline: deadline,
                                       operation: dstOp)
        let src: ExecChannel
        do throws(SSHError) {
            src = try ExecChannel.open(core: source, command: sourceCommand, token: token, deadline: deadline,
                                       operation: srcOp)
        } catch {
            dst.abandon()
            throw error
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        var head = 0
        var tail = 0
        let hasher = SHA256Hasher()
        var moved: Int64 = 0
        var reported: Int64 = 0
        var srcErr: [UInt8] = []
        var dstOut: [UInt8] = []
        var dstErr: [UInt8] = []
        let keep = 1 << 20  // keep at most the last MiB of side outputs
        func append(_ a: inout [UInt8], _ b: UnsafeRawBufferPointer) {
            a.append(contentsOf: b)
            if a.count > 2 * keep { a.removeFirst(a.count - keep) }
        }
        do throws(SSHError) {
            while !(src.outputDone && dst.outputDone) {
                if token.isCancelled { throw source.error(.cancelled, operation, "cancelled") }
                if let deadline, ContinuousClock.now >= deadline {
                    throw source.error(.commandTimeout, operation, "timed out after \(moved) bytes")
                }
                var progressed = false
                var blocked: [SessionCore] = []
                func block(_ c: SessionCore) { if !blocked.contains(where: { $0 === c }) { blocked.append(c) } }

                // Source stdout into the buffer (only while there is room), hashing on the way.
                if !src.writePending && !(source === destination && dst.writePending) {
                    if tail == bufferSize && head > 0 {
                        let live = tail - head
                        buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + head, byteCount: live)
                        head = 0
                        tail = live
                    }
                    var taken = 0
                    while tail < bufferSize && taken < 4 << 20 && !src.stdoutEOF {
                        let room = UnsafeMutableRawBufferPointer(rebasing: buffer[tail...])
                        guard let n = try src.readOnce(stream: 0, into: room) else {
                            progressed = true  // end of the source's stdout
                            break
                        }
                        if n == 0 {
                            block(source)
                            break
                        }
                        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[tail..<tail + n]))
                        tail += n
                        taken += n
                        moved += Int64(n)
                        progressed = true
                    }
                    let e = try src.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        append(&srcErr, b)
                    }
                    if ExecChannel.progressed(e) { progressed = true } else if e == .blocked { block(source) }
                }
                // Buffer into destination stdin; EOF once the source ended and the buffer is empty.
                if !dst.inputClosed {
                    var budget = 4 << 20
                    while budget > 0 && head < tail {
                        guard let w = try dst.write(UnsafeRawBufferPointer(rebasing: buffer[head..<tail])) else {
                            block(destination)
                            break
                        }
                        if dst.inputClosed { break }
                        head += w
                        budget -= w
                        progressed = true
                    }
                    if head == tail {
                        head = 0
                        tail = 0
                        if src.outputDone && !dst.inputClosed {
                            if try dst.sendEOF() { progressed = true } else { block(destination) }
                        }
                    }
                    if let progress, moved - reported >= 1 << 20 {
                        reported = moved
                        progress(moved)
                    }
                }
                if dst.remoteStoppedReading && !src.outputDone {
                    throw destination.error(.remoteCommandFailed, dstOp,
                                            "the destination command stopped reading its input after \(moved) bytes")
                }
                // Destination's own output.
                if !dst.writePending {
                    let o = try dst.read(stream: 0, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        append(&dstOut, b)
                    }
                    if ExecChannel.progressed(o) { progressed = true } else if o == .blocked { block(destination) }
                    let e = try dst.read(stream: 1, into: scratch, limit: 1 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        append(&dstErr, b)
                    }
                    if ExecChannel.progressed(e) { progressed = true } else if e == .blocked { block(destination) }
                } else {
                    block(destination)
                }
                if src.writePending { block(source) }
                if src.outputDone && dst.outputDone { break }
                if progressed {
                    source.markActive()
                    destination.markActive()
                } else {
                    if blocked.isEmpty { blocked = [source] }
                    try SessionCore.wait(blocked, token: token, deadline: deadline, operation: operation)
                }
            }
        } catch {
            src.abandon()
            dst.abandon()
            throw error
        }
        let srcStatus: Int32
        let dstStatus: Int32
        do throws(SSHError) {
            srcStatus = try src.finish(token: token, deadline: deadline)
        } catch {
            dst.abandon()
            throw error
        }
        dstStatus = try dst.finish(token: token, deadline: deadline)
        progress?(moved)
        let srcOutput = CommandOutput(exitStatus: srcStatus, stdout: [], stderr: srcErr)
        let dstOutput = CommandOutput(exitStatus: dstStatus, stdout: dstOut, stderr: dstErr)
        if srcStatus != 0 {
            throw source.error(.remoteCommandFailed, srcOp,
                               "the source command exited with status \(srcStatus) after \(moved) bytes: "
                               + srcOutput.stderrTail(maxBytes: 2000))
        }
        if dstStatus != 0 {
            throw destination.error(.remoteCommandFailed, dstOp,
                                    "the destination command exited with status \(dstStatus) after \(moved) bytes: "
                                    + dstOutput.stderrTail(maxBytes: 2000))
        }
        return RelayResult(bytes: moved, sha256: hasher.finalize(), duration: ContinuousClock.now - start,
                           source: srcOutput, destination: dstOutput)
    }
}
