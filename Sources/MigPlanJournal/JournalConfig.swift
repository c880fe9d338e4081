internal import CLibPQ
import Foundation

/// libpq's `sslmode`, ordered from weakest to strongest.
public enum JournalSSLMode: String, Sendable, Codable, CaseIterable, Comparable {
    case disable
    case allow
    case prefer
    case require
    case verifyCA = "verify-ca"
    case verifyFull = "verify-full"

    private var rank: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
    /// Whether libpq must use TLS at all in this mode.
    public var requiresTLS: Bool { self >= .require }
}

/// Where and how to reach the journal database. Never holds the password: the password is read
/// from the environment variable named by `passwordEnvironmentVariable` and passed to
/// `JournalConnection.connect` as a value.
public struct JournalConfig: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var database: String
    public var user: String
    /// Default `verify-full`: TLS, the server certificate signed by `sslRootCert`, and its name
    /// (or IP subjectAltName) matching `host`.
    public var sslMode: JournalSSLMode
    /// The weakest `sslMode` this configuration may use: connecting with a weaker one is refused
    /// before any packet is sent. Plans get `verify-ca` unless they lower it explicitly.
    public var minimumSSLMode: JournalSSLMode
    public var sslRootCert: String?
    public var sslCert: String?
    public var sslKey: String?
    /// Seconds libpq waits for the connection (libpq `connect_timeout`).
    public var connectTimeout: Int
    public var applicationName: String
    /// The environment variable holding the password (e.g. `MIGPLAN_JOURNAL_PASSWORD`).
    public var passwordEnvironmentVariable: String?
    /// PostgreSQL schema holding migplan's tables (`search_path`); nil means `public`.
    /// Tests use a throwaway schema so they never touch a real journal.
    public var schema: String?

    public init(
        host: String, port: Int = 5432, database: String = "migplan", user: String = "migplan",
        sslMode: JournalSSLMode = .verifyFull, minimumSSLMode: JournalSSLMode = .verifyCA,
        sslRootCert: String? = nil, sslCert: String? = nil, sslKey: String? = nil,
        connectTimeout: Int = 10, applicationName: String = "migplan",
        passwordEnvironmentVariable: String? = "MIGPLAN_JOURNAL_PASSWORD", schema: String? = nil
    ) {
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.sslMode = sslMode
        self.minimumSSLMode = minimumSSLMode
        self.sslRootCert = sslRootCert
        self.sslCert = sslCert
        self.sslKey = sslKey
        self.connectTimeout = connectTimeout
        self.applicationName = applicationName
        self.passwordEnvironmentVariable = passwordEnvironmentVariable
        self.schema = schema
    }

    /// A configuration from a libpq conninfo string (`host=... port=... sslmode=...` or a
    /// `postgresql://` URI), parsed by libpq itself (`PQconninfoParse`). A password in the
    /// conninfo is refused: it belongs in the environment variable. Keywords migplan does not
    /// manage are refused too, so nothing silently weakens the connection.
    public init(conninfo: String, passwordEnvironmentVariable: String? = "MIGPLAN_JOURNAL_PASSWORD",
                minimumSSLMode: JournalSSLMode = .verifyCA) throws {
        var errmsg: UnsafeMutablePointer<CChar>? = nil
        guard let options = PQconninfoParse(conninfo, &errmsg) else {
            let text = errmsg.map { String(cString: $0) } ?? "out of memory"
            if let errmsg { PQfreemem(errmsg) }
            throw JournalError(.config, "invalid journal conninfo: \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        defer { PQconninfoFree(options) }
        var values: [String: String] = [:]
        var p = options
        while let keyword = p.pointee.keyword {
            if let val = p.pointee.val { values[String(cString: keyword)] = String(cString: val) }
            p += 1
        }
        if values["password"] != nil {
            throw JournalError(.config, "the journal conninfo contains a password; put it in the environment variable \(passwordEnvironmentVariable ?? "MIGPLAN_JOURNAL_PASSWORD") instead")
        }
        let known: Set<String> = ["host", "hostaddr", "port", "dbname", "user", "sslmode", "sslrootcert", "sslcert",
                                  "sslkey", "connect_timeout", "application_name"]
        if let unknown = values.keys.sorted().first(where: { !known.contains($0) }) {
            throw JournalError(.config, "conninfo keyword \"\(unknown)\" is not supported by migplan's journal")
        }
        guard let host = values["host"] ?? values["hostaddr"], !host.isEmpty else {
            throw JournalError(.config, "the journal conninfo names no host")
        }
        var mode = JournalSSLMode.verifyFull
        if let m = values["sslmode"] {
            guard let parsed = JournalSSLMode(rawValue: m) else {
                throw JournalError(.config, "unknown sslmode \"\(m)\" (one of: \(JournalSSLMode.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            mode = parsed
        }
        var port = 5432
        if let p = values["port"] {
            guard let n = Int(p), (1...65535).contains(n) else { throw JournalError(.config, "invalid port \"\(p)\"") }
            port = n
        }
        self.init(host: host, port: port, database: values["dbname"] ?? "migplan", user: values["user"] ?? "migplan",
                  sslMode: mode, minimumSSLMode: minimumSSLMode, sslRootCert: values["sslrootcert"],
                  sslCert: values["sslcert"], sslKey: values["sslkey"],
                  connectTimeout: values["connect_timeout"].flatMap { Int($0) } ?? 10,
                  applicationName: values["application_name"] ?? "migplan",
                  passwordEnvironmentVariable: passwordEnvironmentVariable)
    }

    /// "migplan@10.77.0.1:5433/migplan", for messages.
    public var target: String { "\(user)@\(host):\(port)/\(database)" }

    /// Throws when the configuration cannot be used as it is.
    public func validate() throws {
        if host.isEmpty { throw JournalError(.config, "journal host is empty") }
        if !(1...65535).contains(port) { throw JournalError(.config, "journal port \(port) is out of range") }
        if database.isEmpty || user.isEmpty { throw JournalError(.config, "journal database and user must be set") }
        if sslMode < minimumSSLMode {
            throw JournalError(.config, "sslmode \(sslMode.rawValue) is weaker than the required \(minimumSSLMode.rawValue); refusing to connect to \(target)")
        }
        if let schema, !Self.isPlainIdentifier(schema) {
            throw JournalError(.config, "journal schema \"\(schema)\" must be a lowercase identifier ([a-z_][a-z0-9_]*)")
        }
        if connectTimeout < 0 { throw JournalError(.config, "connect_timeout must not be negative") }
    }

    /// libpq fills every keyword the configuration leaves unset from `PG*` environment variables
    /// and service files. Those that could redirect the connection or swap the trusted CA are
    /// refused rather than silently obeyed (unsetting them is not thread-safe).
    public func checkEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        var steering = ["PGSERVICE", "PGSERVICEFILE"]
        if Self.numericAddress(host) == nil { steering.append("PGHOSTADDR") }
        if sslRootCert == nil { steering.append("PGSSLROOTCERT") }
        let present = steering.filter { environment[$0] != nil }
        if !present.isEmpty {
            throw JournalError(.config, "\(present.joined(separator: ", ")) set in the environment would steer the journal connection to \(target); unset it, or put the setting in the plan's journal section")
        }
    }

    /// `host` when it is a literal IPv4 or IPv6 address.
    static func numericAddress(_ host: String) -> String? {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 { return host }
        return nil
    }

    /// The password from the environment (nil when no variable is configured or it is unset).
    public func password(in environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard let name = passwordEnvironmentVariable else { return nil }
        return environment[name]
    }

    /// libpq keyword/value pairs for `PQconnectdbParams`. Every security-relevant keyword is set
    /// explicitly, so `PGSSLMODE`, `PGHOSTADDR` (for a literal address) and
    /// `PGSSLMINPROTOCOLVERSION` in the environment cannot weaken it; `checkEnvironment` refuses
    /// the variables that no keyword here overrides.
    func connectionParameters(password: String?) -> [(String, String)] {
        var p: [(String, String)] = [
            ("host", host), ("port", String(port)), ("dbname", database), ("user", user),
            ("sslmode", sslMode.rawValue), ("connect_timeout", String(connectTimeout)),
            ("application_name", applicationName), ("client_encoding", "UTF8"), ("gssencmode", "disable"),
            // A database that vanishes without a reset (cut network) is noticed within ~20 s
            // instead of blocking a statement for the kernel's default of many minutes.
            ("keepalives", "1"), ("keepalives_idle", "10"), ("keepalives_interval", "5"), ("keepalives_count", "3"),
            ("tcp_user_timeout", "20000"),
            ("ssl_min_protocol_version", "TLSv1.2"),
        ]
        if let address = Self.numericAddress(host) { p.append(("hostaddr", address)) }
        if let sslRootCert { p.append(("sslrootcert", sslRootCert)) }
        if let sslCert { p.append(("sslcert", sslCert)) }
        if let sslKey { p.append(("sslkey", sslKey)) }
        // Server notices (e.g. "already exists, skipping") are not errors: keep them off stderr.
        p.append(("options", "-c client_min_messages=warning" + (schema.map { " -c search_path=\($0)" } ?? "")))
        if let password { p.append(("password", password)) }
        return p
    }

    static func isPlainIdentifier(_ s: String) -> Bool {
        guard let first = s.utf8.first, s.utf8.count <= 63 else { return false }
        let head: ClosedRange<UInt8> = UInt8(ascii: "a")...UInt8(ascii: "z")
        guard head.contains(first) || first == UInt8(ascii: "_") else { return false }
        return s.utf8.allSatisfy { head.contains($0) || $0 == UInt8(ascii: "_") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }
}
