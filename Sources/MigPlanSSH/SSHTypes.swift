import MigPlanBasics

/// Where to connect: the plan's host name (for messages), its address, port and login user.
public struct SSHEndpoint: Sendable, Hashable, Codable {
    public var hostName: String
    public var address: String
    public var port: Int
    public var user: String

    public init(hostName: String, address: String, port: Int = 22, user: String = "root") {
        self.hostName = hostName
        self.address = address
        self.port = port
        self.user = user
    }

    /// `address` for port 22, else `[address]:port`: the form known_hosts uses.
    public var knownHostsName: String { port == 22 ? address : "[\(address)]:\(port)" }
}

/// The algorithms a plan allows, in order of preference. Exactly these are offered, in both
/// directions; nothing else is ever negotiated.
public struct SSHAlgorithms: Sendable, Hashable, Codable {
    public var ciphers: [String]
    public var kex: [String]
    public var macs: [String]
    public var hostKeyTypes: [String]

    public init(
        ciphers: [String] = ["aes256-ctr"],
        kex: [String] = ["diffie-hellman-group-exchange-sha256"],
        macs: [String] = ["hmac-sha2-256"],
        hostKeyTypes: [String] = ["ssh-ed25519"]
    ) {
        self.ciphers = ciphers
        self.kex = kex
        self.macs = macs
        self.hostKeyTypes = hostKeyTypes
    }

    /// The paper's choice: aes256-ctr, diffie-hellman-group-exchange-sha256, hmac-sha2-256, ssh-ed25519.
    public static let paperDefaults = SSHAlgorithms()
}

/// The controller's key for a host. The passphrase is read by the caller from the environment
/// variable the plan names; it is never logged or put in an error.
public struct SSHIdentity: Sendable, Hashable {
    public var privateKeyPath: String
    public var publicKeyPath: String?
    public var passphrase: String?

    public init(privateKeyPath: String, publicKeyPath: String? = nil, passphrase: String? = nil) {
        self.privateKeyPath = privateKeyPath
        self.publicKeyPath = publicKeyPath
        self.passphrase = passphrase
    }
}

extension SSHIdentity: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String {
        "SSHIdentity(\(privateKeyPath), passphrase: \(passphrase == nil ? "none" : "<redacted>"))"
    }

    public var debugDescription: String { description }

    /// `dump`, `String(reflecting:)` and test failure messages see the passphrase redacted too.
    public var customMirror: Mirror {
        Mirror(self, children: [
            "privateKeyPath": privateKeyPath,
            "publicKeyPath": publicKeyPath as Any,
            "passphrase": passphrase == nil ? "none" : "<redacted>",
        ])
    }
}

/// What the handshake settled on (`libssh2_session_methods`).
public struct NegotiatedAlgorithms: Sendable, Hashable, Codable {
    public var kex: String
    public var hostKey: String
    public var cipherClientToServer: String
    public var cipherServerToClient: String
    public var macClientToServer: String
    public var macServerToClient: String
    public var compressionClientToServer: String
    public var compressionServerToClient: String

    public init(
        kex: String, hostKey: String, cipherClientToServer: String, cipherServerToClient: String,
        macClientToServer: String, macServerToClient: String,
        compressionClientToServer: String = "none", compressionServerToClient: String = "none"
    ) {
        self.kex = kex
        self.hostKey = hostKey
        self.cipherClientToServer = cipherClientToServer
        self.cipherServerToClient = cipherServerToClient
        self.macClientToServer = macClientToServer
        self.macServerToClient = macServerToClient
        self.compressionClientToServer = compressionClientToServer
        self.compressionServerToClient = compressionServerToClient
    }

    /// One line for logs: `kex=... hostkey=... cipher=c2s/s2c mac=c2s/s2c`.
    public var summary: String {
        func pair(_ a: String, _ b: String) -> String { a == b ? a : "\(a)/\(b)" }
        return "kex=\(kex) hostkey=\(hostKey) cipher=\(pair(cipherClientToServer, cipherServerToClient)) "
            + "mac=\(pair(macClientToServer, macServerToClient))"
    }
}

/// Called with the number of bytes moved so far. Runs on the connection's own thread: keep it cheap.
public typealias SSHProgress = @Sendable (Int64) -> Void

/// Bytes moved by an upload, download or stream, their SHA-256 and how long it took.
public struct TransferResult: Sendable, Hashable {
    public var bytes: Int64
    public var sha256: SHA256Hasher.Digest
    public var duration: Duration

    public init(bytes: Int64, sha256: SHA256Hasher.Digest, duration: Duration) {
        self.bytes = bytes
        self.sha256 = sha256
        self.duration = duration
    }

    /// Megabytes (10^6) per second.
    public var megabytesPerSecond: Double {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return seconds > 0 ? Double(bytes) / seconds / 1e6 : 0
    }
}

/// What `SSHRelay.pipe` moved: bytes, their SHA-256, the time, and both commands' outputs.
public struct RelayResult: Sendable {
    public var bytes: Int64
    public var sha256: SHA256Hasher.Digest
    public var duration: Duration
    /// The source command's exit status and stderr (its stdout was the relayed stream).
    public var source: CommandOutput
    /// The destination command's exit status, stdout and stderr.
    public var destination: CommandOutput

    public var megabytesPerSecond: Double {
        TransferResult(bytes: bytes, sha256: sha256, duration: duration).megabytesPerSecond
    }
}
