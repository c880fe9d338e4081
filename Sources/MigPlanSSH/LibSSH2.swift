internal import CLibSSH2
import Foundation

/// `libssh2_init(0)` exactly once per process, before any session exists (a lazily initialised,
/// thread-safe global: Swift runs a global's initialiser once, under a lock).
enum LibSSH2 {
    private static let initResult: Int32 = {
        let rc = libssh2_init(0)
        // Registered after libssh2_init (so after OpenSSL's own exit handler): runs first at exit
        // and lets session threads that are closing finish before OpenSSL is torn down.
        atexit { PendingShutdowns.waitAtExit() }
        return rc
    }()

    static func ensureInitialized() {
        precondition(initResult == 0, "libssh2_init failed: \(initResult)")
    }

    /// The runtime libssh2 version (`libssh2_version(0)`).
    static var version: String {
        ensureInitialized()
        return libssh2_version(0).map { String(cString: $0) } ?? "unknown"
    }
}

/// The libssh2 method types a plan constrains.
enum MethodType: CaseIterable {
    case kex, hostKey, cryptCS, cryptSC, macCS, macSC

    var raw: Int32 {
        switch self {
        case .kex: return LIBSSH2_METHOD_KEX
        case .hostKey: return LIBSSH2_METHOD_HOSTKEY
        case .cryptCS: return LIBSSH2_METHOD_CRYPT_CS
        case .cryptSC: return LIBSSH2_METHOD_CRYPT_SC
        case .macCS: return LIBSSH2_METHOD_MAC_CS
        case .macSC: return LIBSSH2_METHOD_MAC_SC
        }
    }

    /// The plan field the list comes from.
    var planField: String {
        switch self {
        case .kex: return "kex"
        case .hostKey: return "hostKeyTypes"
        case .cryptCS, .cryptSC: return "ciphers"
        case .macCS, .macSC: return "macs"
        }
    }

    var label: String {
        switch self {
        case .kex: return "key exchange"
        case .hostKey: return "host key type"
        case .cryptCS: return "cipher (client to server)"
        case .cryptSC: return "cipher (server to client)"
        case .macCS: return "MAC (client to server)"
        case .macSC: return "MAC (server to client)"
        }
    }

    func names(in algorithms: SSHAlgorithms) -> [String] {
        switch self {
        case .kex: return algorithms.kex
        case .hostKey: return algorithms.hostKeyTypes
        case .cryptCS, .cryptSC: return algorithms.ciphers
        case .macCS, .macSC: return algorithms.macs
        }
    }
}

/// What this libssh2 build supports, per method (`libssh2_session_supported_algs`).
public enum SSHSupportedAlgorithms {
    /// Names libssh2 knows for ciphers, kex, macs and host key types.
    public static func all() -> (ciphers: [String], kex: [String], macs: [String], hostKeyTypes: [String]) {
        LibSSH2.ensureInitialized()
        guard let session = libssh2_session_init_ex(nil, nil, nil, nil) else { return ([], [], [], []) }
        defer { libssh2_session_free(session) }
        return (
            supported(session, .cryptCS), supported(session, .kex), supported(session, .macCS),
            supported(session, .hostKey)
        )
    }

    static func supported(_ session: OpaquePointer, _ type: MethodType) -> [String] {
        var algs: UnsafeMutablePointer<UnsafePointer<CChar>?>?
        let count = libssh2_session_supported_algs(session, type.raw, &algs)
        guard count > 0, let list = algs else { return [] }
        defer { libssh2_free(session, UnsafeMutableRawPointer(mutating: list)) }
        return (0..<Int(count)).compactMap { list[$0].map { String(cString: $0) } }
    }

    /// The plan's names that this libssh2 does not know, with the field they belong to.
    public static func unknownNames(in algorithms: SSHAlgorithms) -> [(field: String, name: String)] {
        let s = all()
        var out: [(String, String)] = []
        for n in algorithms.ciphers where !s.ciphers.contains(n) { out.append(("ciphers", n)) }
        for n in algorithms.kex where !s.kex.contains(n) { out.append(("kex", n)) }
        for n in algorithms.macs where !s.macs.contains(n) { out.append(("macs", n)) }
        for n in algorithms.hostKeyTypes where !s.hostKeyTypes.contains(n) { out.append(("hostKeyTypes", n)) }
        return out
    }

    /// libssh2's runtime version string.
    public static var libssh2Version: String { LibSSH2.version }
}

/// Counts connections whose disconnect is queued but not finished (see `LibSSH2.initResult`).
enum PendingShutdowns {
    private static let condition = NSCondition()
    nonisolated(unsafe) private static var count = 0

    static func begin() {
        condition.lock()
        count += 1
        condition.unlock()
    }

    static func end() {
        condition.lock()
        count -= 1
        condition.broadcast()
        condition.unlock()
    }

    static func waitAtExit() {
        let deadline = Date().addingTimeInterval(2)
        condition.lock()
        while count > 0 && condition.wait(until: deadline) {}
        condition.unlock()
    }
}
