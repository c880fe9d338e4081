// SSH algorithm names: the catalog of names libssh2 knows (injected; the model does not link
// libssh2) and the list of weak algorithms refused by default.

/// Names libssh2 supports, per kind. The CLI builds the real one from
/// `libssh2_session_supported_algs`; `libssh2_1_10` is what libssh2 1.10.0 on Debian 12 reports.
public struct AlgorithmCatalog: Sendable, Hashable {
    /// Where the names come from, e.g. "libssh2 1.10.0", for messages.
    public var source: String
    public var names: [AlgorithmKind: [String]]

    public init(source: String, names: [AlgorithmKind: [String]]) {
        self.source = source
        self.names = names
    }

    public func contains(_ name: String, kind: AlgorithmKind) -> Bool { names[kind]?.contains(name) ?? false }

    /// `libssh2_session_supported_algs` of libssh2 1.10.0 (Debian 12, OpenSSL 3 backend), in its order.
    public static let libssh2_1_10 = AlgorithmCatalog(source: "libssh2 1.10.0", names: [
        .cipher: ["aes128-ctr", "aes192-ctr", "aes256-ctr", "aes256-cbc", "rijndael-cbc@lysator.liu.se",
                  "aes192-cbc", "aes128-cbc", "blowfish-cbc", "arcfour128", "arcfour", "cast128-cbc", "3des-cbc"],
        .kex: ["curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384",
               "ecdh-sha2-nistp521", "diffie-hellman-group-exchange-sha256", "diffie-hellman-group16-sha512",
               "diffie-hellman-group18-sha512", "diffie-hellman-group14-sha256", "diffie-hellman-group14-sha1",
               "diffie-hellman-group1-sha1", "diffie-hellman-group-exchange-sha1"],
        .mac: ["hmac-sha2-256", "hmac-sha2-512", "hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96",
               "hmac-ripemd160", "hmac-ripemd160@openssh.com"],
        .hostKey: ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp384-cert-v01@openssh.com",
                   "ecdsa-sha2-nistp521-cert-v01@openssh.com", "ssh-ed25519", "ssh-rsa", "ssh-dss"],
    ])
}

/// Algorithms refused unless `ssh.allowWeakAlgorithms: true`.
public enum WeakAlgorithms {
    /// Why `name` is weak, or nil when it is not on the list. Patterns: `3des-cbc`, `arcfour*`,
    /// `blowfish-cbc`, `cast128-cbc`, `*-cbc` (and `*-cbc@*`), `hmac-md5*`, `hmac-sha1*`,
    /// `diffie-hellman-group1-sha1`, `diffie-hellman-group14-sha1`,
    /// `diffie-hellman-group-exchange-sha1`, `ssh-dss`, `ssh-rsa`.
    public static func reason(for name: String) -> String? {
        switch name {
        case "3des-cbc": return "64-bit block cipher (Sweet32) in CBC mode"
        case "blowfish-cbc", "cast128-cbc": return "64-bit block cipher in CBC mode"
        case "diffie-hellman-group1-sha1": return "1024-bit group (Logjam) with SHA-1"
        case "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1": return "key exchange hashed with SHA-1"
        case "ssh-dss": return "DSA keys are limited to 1024 bits and SHA-1"
        case "ssh-rsa": return "RSA signatures with SHA-1"
        default: break
        }
        if name.hasPrefix("arcfour") { return "RC4 stream cipher (biased keystream)" }
        if name.hasSuffix("-cbc") || name.contains("-cbc@") { return "CBC mode (plaintext-recovery attacks on SSH)" }
        if name.hasPrefix("hmac-md5") { return "MD5-based MAC" }
        if name.hasPrefix("hmac-sha1") { return "SHA-1-based MAC" }
        return nil
    }

    public static func isWeak(_ name: String) -> Bool { reason(for: name) != nil }
}
