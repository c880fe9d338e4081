import Foundation
import MigPlanBasics

/// What `runStreaming` moved, with the command's exit status and stderr.
public struct StreamResult: Sendable {
    public var exitStatus: Int32
    /// Bytes written to the command's stdin, and their SHA-256.
    public var stdinBytes: Int64
    public var stdinSHA256: SHA256Hasher.Digest
    /// Bytes read from the command's stdout (given to the sink), and their SHA-256.
    public var stdoutBytes: Int64
    public var stdoutSHA256: SHA256Hasher.Digest
    public var stderr: [UInt8]
    public var duration: Duration
    /// The command exited (or closed its stdin) before it read all of the source.
    public var inputTruncated: Bool

    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

extension SSHConnection {
    /// Runs `command` through the remote user's shell; stdout and stderr are drained together (a
    /// command writing megabytes to stderr never stalls). A non-zero exit status is a result. On
    /// timeout or task cancellation the channel is closed and `.commandTimeout` / `.cancelled` thrown.
    public func run(_ command: String, timeout: Duration? = nil) async throws(SSHError) -> CommandOutput {
        let operation = "exec \(SSHConnection.abbreviate(command))"
        return try await perform(operation) { (core: SessionCore, token: CancelToken) throws(SSHError) -> CommandOutput in
            let out = CollectingBuffer()
            let err = CollectingBuffer()
            let r = try core.pump(command: command, operation: operation, stdin: nil, stdout: { b throws(SSHError) in out.append(b) },
                                  stderr: { err.append($0) }, stdinHasher: nil, stdoutHasher: nil, progress: nil,
                                  token: token, deadline: timeout.map { ContinuousClock.now + $0 })
            return CommandOutput(exitStatus: r.status, stdout: out.bytes, stderr: err.bytes)
        }
    }

    /// Runs `command` feeding `stdin` (if any) into it and handing its stdout to `stdout` (if any),
    /// both with large buffers; computes SHA-256 of both streams on the fly. `progress` gets the
    /// bytes written to stdin so far (or read from stdout when there is no stdin).
    public func runStreaming(
        _ command: String, stdin: (any SSHByteSource)? = nil, stdout: (any SSHByteSink)? = nil,
        timeout: Duration? = nil, progress: SSHProgress? = nil
    ) async throws(SSHError) -> StreamResult {
        let operation = "exec \(SSHConnection.abbreviate(command))"
        return try await perform(operation) { (core: SessionCore, token: CancelToken) throws(SSHError) -> StreamResult in
            let start = ContinuousClock.now
            let err = CollectingBuffer()
            let inHash = SHA256Hasher()
            let outHash = SHA256Hasher()
            let r = try core.pump(
                command: command, operation: operation, stdin: stdin,
                stdout: { (b: UnsafeRawBufferPointer) throws(SSHError) in
                    guard let stdout else { return }
                    do { try stdout.write(b) } catch {
                        throw core.error(.localIO, operation, "writing the command's output locally failed: \(error)")
                    }
                },
                stderr: { err.append($0) }, stdinHasher: inHash, stdoutHasher: outHash, progress: progress,
                token: token, deadline: timeout.map { ContinuousClock.now + $0 })
            return StreamResult(
                exitStatus: r.status, stdinBytes: r.stdinBytes, stdinSHA256: inHash.finalize(),
                stdoutBytes: r.stdoutBytes, stdoutSHA256: outHash.finalize(), stderr: err.bytes,
                duration: ContinuousClock.now - start, inputTruncated: r.inputTruncated)
        }
    }

    static func abbreviate(_ command: String) -> String {
        let oneLine = command.replacingOccurrences(of: "\n", with: "\\n")
        let quoted = "\"" + (oneLine.count > 120 ? String(oneLine.prefix(117)) + "..." : oneLine) + "\""
        return quoted
    }
}

/// A growable byte buffer filled on the session thread, read after the job finished.
final class CollectingBuffer: @unchecked Sendable {
    private(set) var bytes: [UInt8] = []
    func append(_ b: UnsafeRawBufferPointer) { bytes.append(contentsOf: b) }
}

struct PumpResult {
    var status: Int32
    var stdinBytes: Int64
    var stdoutBytes: Int64
    var inputTruncated: Bool
}

extension SessionCore {
    static let readChunk = 256 * 1024
    static let writeChunk = 2 * 1024 * 1024
    /// How long a command whose local stdin source failed is given to end after its end-of-input.
    static let sourceFailureGrace: Duration = .seconds(10)

    /// The loop behind `run` and `runStreaming`: writes stdin, reads stdout and stderr, and waits on
    /// the socket only when no stream made progress.
    func pump(
        command: String, operation: String, stdin: (any SSHByteSource)?,
        stdout: (UnsafeRawBufferPointer) throws(SSHError) -> Void,
        stderr: (UnsafeRawBufferPointer) -> Void,
        stdinHasher: SHA256Hasher?, stdoutHasher: SHA256Hasher?, progress: SSHProgress?,
        token: CancelToken, deadline: ContinuousClock.Instant?
    ) throws(SSHError) -> PumpResult {
        let channel = try ExecChannel.open(core: self, command: command, token: token, deadline: deadline,
                                           operation: operation)
        let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SessionCore.readChunk, alignment: 16)
        defer { readBuffer.deallocate() }
        let inBuffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: stdin == nil ? 1 : SessionCore.writeChunk, alignment: 16)
        defer { inBuffer.deallocate() }
        var inStart = 0
        var inEnd = 0
        var sourceEnded = stdin == nil
        var stdinBytes: Int64 = 0
        var stdoutBytes: Int64 = 0
        var reported: Int64 = 0
        var sourceFailure: SSHError?
        var failureDeadline: ContinuousClock.Instant?
        func report(_ total: Int64) {
            if let progress, total - reported >= 1 << 20 {
                reported = total
                progress(total)
            }
        }
        do throws(SSHError) {
            while !channel.outputDone {
                if token.isCancelled { throw error(.cancelled, operation, "cancelled") }
                if let sourceFailure, let failureDeadline, ContinuousClock.now >= failureDeadline { throw sourceFailure }
                if let deadline, ContinuousClock.now >= deadline { throw error(.commandTimeout, operation, "timed out") }
                var progressed = false
                // stdin
                if !channel.inputClosed {
                    var budget = 4 << 20
                    while budget > 0 {
                        if inStart == inEnd && !sourceEnded, let stdin {
                            var n = 0
                            do { n = try stdin.read(into: inBuffer) } catch {
                                // The remote command gets end-of-input and is waited for (a short
                                // grace) before the failure is reported: a caller that cleans up
                                // after it never races a receiver still creating its file.
                                sourceFailure = self.error(.localIO, operation, "reading the local source failed: \(error)")
                                let grace = ContinuousClock.now + SessionCore.sourceFailureGrace
                                failureDeadline = deadline.map { min($0, grace) } ?? grace
                            }
                            if sourceFailure != nil || n == 0 { sourceEnded = true } else {
                                inStart = 0
                                inEnd = n
                                stdinHasher?.update(UnsafeRawBufferPointer(rebasing: inBuffer[0..<n]))
                            }
                        }
                        if inStart < inEnd {
                            guard let w = try channel.write(UnsafeRawBufferPointer(rebasing: inBuffer[inStart..<inEnd]))
                            else { break }
                            if channel.inputClosed { break }
                            inStart += w
                            budget -= w
                            stdinBytes += Int64(w)
                            progressed = true
                            report(stdinBytes)
                        } else {
                            if try channel.sendEOF() { progressed = true }
                            break
                        }
                    }
                }
                // stdout and stderr (not while a partial packet of ours waits in libssh2's buffer)
                if !channel.writePending {
                    let o = try channel.read(stream: 0, into: readBuffer, limit: 4 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        stdoutHasher?.update(b)
                        stdoutBytes += Int64(b.count)
                        try stdout(b)
                    }
                    if ExecChannel.progressed(o) { progressed = true }
                    if stdin == nil { report(stdoutBytes) }
                    let e = try channel.read(stream: 1, into: readBuffer, limit: 4 << 20) { (b: UnsafeRawBufferPointer) throws(SSHError) in
                        stderr(b)
                    }
                    if ExecChannel.progressed(e) { progressed = true }
                }
                if channel.outputDone { break }
                if progressed { markActive() } else { try wait(token, failureDeadline ?? deadline, operation) }
            }
            if let sourceFailure {
                _ = try? channel.finish(token: token, deadline: failureDeadline)
                channel.abandon()  // a no-op once finish freed the channel
                throw sourceFailure
            }
            let status = try channel.finish(token: token, deadline: deadline)
            progress?(stdin == nil ? stdoutBytes : stdinBytes)
            let truncated = stdin != nil && (!sourceEnded || inStart < inEnd)
            return PumpResult(status: status, stdinBytes: stdinBytes, stdoutBytes: stdoutBytes, inputTruncated: truncated)
        } catch {
            channel.abandon()
            throw sourceFailure ?? error
        }
    }
}
