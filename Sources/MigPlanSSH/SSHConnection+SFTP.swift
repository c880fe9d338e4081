internal import CLibSSH2
import Foundation
import MigPlanBasics
#if canImport(Glibc)
import Glibc
#endif

extension SSHConnection {
    /// Bytes per SFTP read/write call: libssh2 pipelines 30,000-byte packets up to this size.
    static let sftpBuffer = 4 * 1024 * 1024

    /// Copies a local file to `remotePath` over SFTP (created or truncated, `mode`), with large
    /// pipelined writes; returns the bytes, their SHA-256 and the time taken.
    public func upload(
        localPath: String, remotePath: String, mode: Int32 = 0o600, timeout: Duration? = nil,
        progress: SSHProgress? = nil
    ) async throws(SSHError) -> TransferResult {
        let operation = "sftp upload \(localPath) -> \(remotePath)"
        return try await perform(operation) { (core: SessionCore, token: CancelToken) throws(SSHError) -> TransferResult in
            let source: FileByteSource
            do { source = try FileByteSource(path: localPath) } catch {
                throw core.error(.localIO, operation, "\(error)")
            }
            return try core.sftpUpload(source: source, remotePath: remotePath, mode: mode, operation: operation,
                                       token: token, deadline: timeout.map { ContinuousClock.now + $0 },
                                       progress: progress)
        }
    }

    /// Copies `remotePath` over SFTP into a local file (created or truncated, mode 0600).
    public func download(
        remotePath: String, localPath: String, timeout: Duration? = nil, progress: SSHProgress? = nil
    ) async throws(SSHError) -> TransferResult {
        let operation = "sftp download \(remotePath) -> \(localPath)"
        return try await perform(operation) { (core: SessionCore, token: CancelToken) throws(SSHError) -> TransferResult in
            let sink: FileByteSink
            do { sink = try FileByteSink(path: localPath) } catch {
                throw core.error(.localIO, operation, "\(error)")
            }
            return try core.sftpDownload(remotePath: remotePath, sink: sink, operation: operation, token: token,
                                         deadline: timeout.map { ContinuousClock.now + $0 }, progress: progress)
        }
    }
}

extension SessionCore {
    static func sftpStatusName(_ code: UInt) -> String {
        switch code {
        case 1: return "end of file"
        case 2: return "no such file"
        case 3: return "permission denied"
        case 4: return "failure"
        case 5: return "bad message"
        case 6: return "no connection"
        case 7: return "connection lost"
        case 8: return "operation unsupported"
        case 11: return "file already exists"
        case 12: return "write protected"
        case 14: return "no space on filesystem"
        case 15: return "quota exceeded"
        default: return "SFTP status \(code)"
        }
    }

    private func sftpError(_ sftp: OpaquePointer?, _ operation: String, _ what: String, rc: Int32) -> SSHError {
        if rc == LIBSSH2_ERROR_SFTP_PROTOCOL, let sftp {
            let status = libssh2_sftp_last_error(sftp)
            return failure(.sftpFailure, operation, "\(what): \(SessionCore.sftpStatusName(UInt(status)))", rc: rc)
        }
        return failure(.sftpFailure, operation, what, rc: rc)
    }

    private func withSFTP<T>(
        _ operation: String, token: CancelToken, deadline: ContinuousClock.Instant?,
        _ body: (OpaquePointer) throws(SSHError) -> T
    ) throws(SSHError) -> T {
        guard let s = session else { throw error(.closed, operation, "the connection is closed") }
        var sftp: OpaquePointer?
        while sftp == nil {
            sftp = libssh2_sftp_init(s)
            if sftp != nil { break }
            let rc = lastErrno()
            guard rc == LIBSSH2_ERROR_EAGAIN else {
                throw failure(.sftpFailure, operation, "cannot start the SFTP subsystem", rc: rc)
            }
            try wait(token, deadline, operation)
        }
        defer {
            let limit = ContinuousClock.now + .seconds(2)
            while libssh2_sftp_shutdown(sftp) == LIBSSH2_ERROR_EAGAIN {
                do { try wait(CancelToken(thread: thread), limit, operation) } catch { break }
            }
        }
        return try body(sftp!)
    }

    private func openHandle(_ sftp: OpaquePointer, path: String, flags: Int, mode: Int, operation: String,
                            token: CancelToken, deadline: ContinuousClock.Instant?) throws(SSHError) -> OpaquePointer {
        while true {
            let h = path.withCString {
                libssh2_sftp_open_ex(sftp, $0, UInt32(path.utf8.count), UInt(flags), Int(mode), LIBSSH2_SFTP_OPENFILE)
            }
            if let h { return h }
            let rc = lastErrno()
            guard rc == LIBSSH2_ERROR_EAGAIN else { throw sftpError(sftp, operation, "cannot open \(path)", rc: rc) }
            try wait(token, deadline, operation)
        }
    }

    private func closeHandle(_ handle: OpaquePointer, operation: String, token: CancelToken,
                             deadline: ContinuousClock.Instant?) throws(SSHError) {
        while true {
            let rc = libssh2_sftp_close_handle(handle)
            if rc == 0 { return }
            guard rc == LIBSSH2_ERROR_EAGAIN else { throw failure(.sftpFailure, operation, "closing the remote file failed", rc: rc) }
            try wait(token, deadline, operation)
        }
    }

    func sftpUpload(source: any SSHByteSource, remotePath: String, mode: Int32, operation: String,
                    token: CancelToken, deadline: ContinuousClock.Instant?, progress: SSHProgress?) throws(SSHError) -> TransferResult {
        let start = ContinuousClock.now
        return try withSFTP(operation, token: token, deadline: deadline) { (sftp: OpaquePointer) throws(SSHError) -> TransferResult in
            let handle = try openHandle(sftp, path: remotePath,
                                        flags: Int(LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC),
                                        mode: Int(mode), operation: operation, token: token, deadline: deadline)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SSHConnection.sftpBuffer, alignment: 16)
            defer { buffer.deallocate() }
            let hasher = SHA256Hasher()
            var total: Int64 = 0
            do throws(SSHError) {
                while true {
                    if token.isCancelled { throw error(.cancelled, operation, "cancelled") }
                    let n: Int
                    do { n = try source.read(into: buffer) } catch {
                        throw self.error(.localIO, operation, "reading the local file failed: \(error)")
                    }
                    if n == 0 { break }
                    hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    var at = 0
                    while at < n {
                        let w = libssh2_sftp_write(handle, (buffer.baseAddress! + at).assumingMemoryBound(to: CChar.self), n - at)
                        if w > 0 {
                            at += w
                            markActive()
                            continue
                        }
                        if Int32(w) == LIBSSH2_ERROR_EAGAIN {
                            try wait(token, deadline, operation)
                            continue
                        }
                        throw sftpError(sftp, operation, "writing \(remotePath) failed", rc: Int32(w))
                    }
                    total += Int64(n)
                    progress?(total)
                }
                try closeHandle(handle, operation: operation, token: token, deadline: deadline)
            } catch {
                _ = libssh2_sftp_close_handle(handle)
                throw error
            }
            return TransferResult(bytes: total, sha256: hasher.finalize(), duration: ContinuousClock.now - start)
        }
    }

    func sftpDownload(remotePath: String, sink: any SSHByteSink, operation: String, token: CancelToken,
                      deadline: ContinuousClock.Instant?, progress: SSHProgress?) throws(SSHError) -> TransferResult {
        let start = ContinuousClock.now
        return try withSFTP(operation, token: token, deadline: deadline) { (sftp: OpaquePointer) throws(SSHError) -> TransferResult in
            let handle = try openHandle(sftp, path: remotePath, flags: Int(LIBSSH2_FXF_READ), mode: 0,
                                        operation: operation, token: token, deadline: deadline)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SSHConnection.sftpBuffer, alignment: 16)
            defer { buffer.deallocate() }
            let hasher = SHA256Hasher()
            var total: Int64 = 0
            var reported: Int64 = 0
            do throws(SSHError) {
                while true {
                    if token.isCancelled { throw error(.cancelled, operation, "cancelled") }
                    let n = libssh2_sftp_read(handle, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), buffer.count)
                    if n > 0 {
                        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                        hasher.update(chunk)
                        do { try sink.write(chunk) } catch {
                            throw self.error(.localIO, operation, "writing the local file failed: \(error)")
                        }
                        total += Int64(n)
                        markActive()
                        if total - reported >= 1 << 20 { reported = total; progress?(total) }
                        continue
                    }
                    if n == 0 { break }
                    if Int32(n) == LIBSSH2_ERROR_EAGAIN {
                        try wait(token, deadline, operation)
                        continue
                    }
                    throw sftpError(sftp, operation, "reading \(remotePath) failed", rc: Int32(n))
                }
                try closeHandle(handle, operation: operation, token: token, deadline: deadline)
            } catch {
                _ = libssh2_sftp_close_handle(handle)
                throw error
            }
            progress?(total)
            return TransferResult(bytes: total, sha256: hasher.finalize(), duration: ContinuousClock.now - start)
        }
    }
}
