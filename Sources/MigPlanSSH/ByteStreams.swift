import Foundation

/// Where the bytes sent to a remote command's stdin come from. Called on the connection's own
/// thread (blocking reads are fine there); `read` returns 0 at the end.
public protocol SSHByteSource: Sendable {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

/// Where a remote command's stdout goes. Called on the connection's own thread.
public protocol SSHByteSink: Sendable {
    func write(_ bytes: UnsafeRawBufferPointer) throws
}

/// A failure of a local source or sink, carried into `SSHError.Kind.localIO`.
public struct SSHLocalIOError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Reads a local file (or any file descriptor it opens).
public final class FileByteSource: SSHByteSource, @unchecked Sendable {
    private let fd: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw SSHLocalIOError("cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Foundation.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SSHLocalIOError("read \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Bytes held in memory.
public final class BytesSource: SSHByteSource, @unchecked Sendable {
    private let bytes: [UInt8]
    private var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - offset)
        if n > 0 {
            bytes.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n)
            }
            offset += n
        }
        return n
    }
}

/// `total` bytes made by repeating `pattern` (benchmarks and tests: no disk involved).
public final class RepeatingSource: SSHByteSource, @unchecked Sendable {
    private let pattern: [UInt8]
    private let total: Int64
    private var sent: Int64 = 0

    public init(pattern: [UInt8], total: Int64) {
        precondition(!pattern.isEmpty)
        self.pattern = pattern
        self.total = total
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var written = 0
        pattern.withUnsafeBytes { src in
            while written < buffer.count && sent < total {
                let at = Int(sent % Int64(pattern.count))
                let n = min(buffer.count - written, pattern.count - at, Int(total - sent))
                (buffer.baseAddress! + written).copyMemory(from: src.baseAddress! + at, byteCount: n)
                written += n
                sent += Int64(n)
            }
        }
        return written
    }
}

/// Writes to a local file (created or truncated, mode 0600).
public final class FileByteSink: SSHByteSink, @unchecked Sendable {
    private let fd: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd < 0 { throw SSHLocalIOError("cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = Foundation.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SSHLocalIOError("write \(path): \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}

/// Keeps everything in memory (read it after the command finished).
public final class CollectingSink: SSHByteSink, @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [UInt8] = []
    public init() {}
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        lock.lock(); defer { lock.unlock() }
        storage.append(contentsOf: bytes)
    }
    public var bytes: [UInt8] { lock.lock(); defer { lock.unlock() }; return storage }
}

/// Throws everything away (benchmarks; the stream's SHA-256 is still computed).
public final class DiscardingSink: SSHByteSink {
    public init() {}
    public func write(_ bytes: UnsafeRawBufferPointer) throws {}
}
