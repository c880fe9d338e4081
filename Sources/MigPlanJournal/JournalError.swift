/// Every failure of the journal: connecting, querying, migrating, spooling, locking, verifying.
///
/// Descriptions carry what a user needs (where, SQLSTATE, the server's own message) and never
/// the connection password: `redacting(_:)` scrubs it from any text that came back from libpq.
public struct JournalError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable, Equatable {
        /// The configuration is unusable (missing field, sslmode weaker than required, password in conninfo).
        case config
        /// Connecting failed (unreachable, refused by pg_hba.conf, TLS or authentication failure).
        case connection
        /// The connection went away during a statement (server stopped, network cut).
        case connectionLost
        /// The server rejected a statement.
        case query
        /// A schema migration failed or the database schema is newer than this migplan.
        case migration
        /// Reading or writing the local spool failed.
        case spool
        /// A container lock could not be taken before the timeout.
        case lockTimeout
        /// A run (or other record) asked for does not exist.
        case notFound
        /// The connection was closed by its owner.
        case closed
    }

    public var code: Code
    /// One line saying what went wrong.
    public var message: String
    /// PostgreSQL's SQLSTATE (`PG_DIAG_SQLSTATE`) when the server sent one.
    public var sqlstate: String?
    /// The server's DETAIL or HINT, or libpq's full message.
    public var detail: String?
    /// What migplan was doing: "connecting to 10.77.0.1:5433", "migration 2 (locks)", a statement name.
    public var context: String?

    public init(_ code: Code, _ message: String, sqlstate: String? = nil, detail: String? = nil, context: String? = nil) {
        self.code = code
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.context = context
    }

    public var description: String {
        var s = "journal: "
        if let context { s += context + ": " }
        s += message
        if let sqlstate { s += " (SQLSTATE \(sqlstate))" }
        if let detail, !detail.isEmpty, detail != message { s += "\n  " + detail.replacingOccurrences(of: "\n", with: "\n  ") }
        return s
    }

    /// True when the error means the database is (temporarily) out of reach, so records should be
    /// spooled rather than lost: a broken connection, SQLSTATE class 08 (connection exception),
    /// 57P01..57P03 (admin/crash shutdown, cannot connect now).
    public var isConnectionFailure: Bool {
        switch code {
        case .connection, .connectionLost, .closed: return true
        default: break
        }
        guard let state = sqlstate else { return false }
        return state.hasPrefix("08") || state == "57P01" || state == "57P02" || state == "57P03"
    }

    /// A copy whose texts no longer contain `secret` (a password libpq might echo back).
    func redacting(_ secret: String?) -> JournalError {
        guard let secret, !secret.isEmpty else { return self }
        func scrub(_ text: String?) -> String? { text?.replacingOccurrences(of: secret, with: "[REDACTED]") }
        var copy = self
        copy.message = scrub(message) ?? ""
        copy.detail = scrub(detail)
        copy.context = scrub(context)
        return copy
    }
}
