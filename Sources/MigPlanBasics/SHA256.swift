internal import CCrypto
import Foundation

/// Incremental SHA-256 over OpenSSL's EVP interface (hardware SHA extensions when present).
///
/// One value owns one EVP context; it is not thread-safe, feed it from one thread at a time.
public final class SHA256Hasher: @unchecked Sendable {
    private let context: OpaquePointer
    private var finished = false

    public init() {
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new failed: out of memory") }
        context = ctx
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "SHA256Hasher used after finalize()")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    public func update<D: DataProtocol>(_ data: D) {
        for region in data.regions {
            region.withUnsafeBytes { update($0) }
        }
    }

    /// The 32-byte digest. The hasher cannot be used afterwards.
    public func finalize() -> Digest {
        precondition(!finished, "SHA256Hasher finalized twice")
        finished = true
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        EVP_DigestFinal_ex(context, &out, &len)
        return Digest(bytes: out)
    }

    /// A SHA-256 digest.
    public struct Digest: Hashable, Sendable, CustomStringConvertible {
        public let bytes: [UInt8]
        public init(bytes: [UInt8]) { self.bytes = bytes }
        /// Lowercase hex, as `sha256sum` prints it.
        public var hex: String { bytes.map { String(format: "%02x", $0) }.joined() }
        /// Unpadded base64, as OpenSSH prints fingerprints after `SHA256:`.
        public var base64Unpadded: String {
            var s = Data(bytes).base64EncodedString()
            while s.hasSuffix("=") { s.removeLast() }
            return s
        }
        public var description: String { hex }
        /// Parse 64 hex characters.
        public init?(hex: String) {
            let chars = Array(hex.utf8)
            guard chars.count == 64 else { return nil }
            var out = [UInt8]()
            out.reserveCapacity(32)
            var i = 0
            while i < 64 {
                guard let h = Self.nibble(chars[i]), let l = Self.nibble(chars[i + 1]) else { return nil }
                out.append(h << 4 | l)
                i += 2
            }
            bytes = out
        }
        private static func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
    }

    /// Digest of a whole buffer.
    public static func hash<D: DataProtocol>(_ data: D) -> Digest {
        let h = SHA256Hasher()
        h.update(data)
        return h.finalize()
    }
}

/// HMAC-SHA-256 of a message under a key (OpenSSL).
public func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var len: UInt32 = 32
    key.withUnsafeBufferPointer { k in
        message.withUnsafeBufferPointer { m in
            _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, &out, &len)
        }
    }
    return out
}

/// HMAC-SHA-1 (OpenSSL): only for matching OpenSSH's hashed known_hosts names (`|1|salt|hash`),
/// which is what that format uses; never for integrity of migplan's own data.
public func hmacSHA1(key: [UInt8], message: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 20)
    var len: UInt32 = 20
    key.withUnsafeBufferPointer { k in
        message.withUnsafeBufferPointer { m in
            _ = HMAC(EVP_sha1(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, &out, &len)
        }
    }
    return out
}

/// Cryptographically secure random bytes (OpenSSL RAND_bytes).
public func secureRandomBytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    guard RAND_bytes(&out, Int32(count)) == 1 else { fatalError("RAND_bytes failed") }
    return out
}
