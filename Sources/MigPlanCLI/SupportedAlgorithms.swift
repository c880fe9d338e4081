import CLibSSH2
import MigPlanModel

/// The SSH algorithm catalog of the libssh2 this process runs with, from
/// `libssh2_session_supported_algs` (a session is created but never connected).
enum SupportedAlgorithms {
    /// Built once per process; falls back to the libssh2 1.10 list if a session cannot be created.
    static let catalog: AlgorithmCatalog = build()

    private static func build() -> AlgorithmCatalog {
        // libssh2_init is reference-counted; this is migplan validate's one call (the SSH module
        // makes its own). It is never undone: libssh2 stays initialised for the process.
        guard libssh2_init(0) == 0, let session = libssh2_session_init_ex(nil, nil, nil, nil) else {
            return .libssh2_1_10
        }
        defer { libssh2_session_free(session) }
        let methods: [(AlgorithmKind, Int32)] = [
            (.kex, LIBSSH2_METHOD_KEX), (.hostKey, LIBSSH2_METHOD_HOSTKEY),
            (.cipher, LIBSSH2_METHOD_CRYPT_CS), (.mac, LIBSSH2_METHOD_MAC_CS),
        ]
        var names: [AlgorithmKind: [String]] = [:]
        for (kind, method) in methods {
            var list: UnsafeMutablePointer<UnsafePointer<CChar>?>?
            let count = libssh2_session_supported_algs(session, method, &list)
            guard count > 0, let list else { return .libssh2_1_10 }
            names[kind] = (0..<Int(count)).compactMap { list[$0].map { String(cString: $0) } }
            libssh2_free(session, list)
        }
        let version = libssh2_version(0).map { String(cString: $0) } ?? "?"
        return AlgorithmCatalog(source: "libssh2 \(version)", names: names)
    }
}
