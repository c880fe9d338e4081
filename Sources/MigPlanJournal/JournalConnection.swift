internal import CLibPQ
import Foundation

/// One thread that runs jobs in order. Every libpq call on a `PGconn` happens on its connection's
/// worker thread, so no two threads ever touch one `PGconn` and Swift's cooperative pool never
/// blocks on the network.
final class PGWorkerThread: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false

    init(name: String) {
        let thread = Thread { [self] in self.loop() }
        thread.name = name
        thread.start()
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Finish the queued jobs, then end the thread.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}

/// The `PGconn` pointer, only ever dereferenced on the owning worker thread.
final class PGHandle: @unchecked Sendable {
    var conn: OpaquePointer?
    init(_ conn: OpaquePointer?) { self.conn = conn }
}

/// Rows of a result, all values in PostgreSQL's text format (`nil` for SQL NULL).
public struct JournalRows: Sendable, Equatable {
    public var columns: [String]
    public var rows: [[String?]]
    /// Rows affected by INSERT/UPDATE/DELETE (`PQcmdTuples`).
    public var affected: Int

    public subscript(row: Int, column: String) -> String? {
        guard let i = columns.firstIndex(of: column) else { return nil }
        return rows[row][i]
    }
    public var count: Int { rows.count }
}

/// A session on the worker thread: statements run synchronously, inside `JournalConnection.withSession`.
/// Not `Sendable`: it never leaves the worker thread.
public final class JournalSession {
    let handle: PGHandle
    let password: String?
    let target: String

    init(handle: PGHandle, password: String?, target: String) {
        self.handle = handle
        self.password = password
        self.target = target
    }

    /// Runs one statement with bound parameters (`PQexecParams`, text format). Values are never
    /// interpolated into the SQL text.
    @discardableResult
    public func execute(_ sql: String, _ params: [String?] = []) throws -> JournalRows {
        guard let conn = handle.conn else { throw JournalError(.closed, "the journal connection is closed", context: target) }
        // Keep the C strings alive for the duration of the call.
        let cStrings: [UnsafeMutablePointer<CChar>?] = params.map { $0.map { strdup($0) } ?? nil }
        defer { for p in cStrings { free(p) } }
        let result: OpaquePointer? = cStrings.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) { values in
                PQexecParams(conn, sql, Int32(params.count), nil, values.baseAddress, nil, nil, 0)
            }
        }
        defer { PQclear(result) }
        let status = result.map { PQresultStatus($0) } ?? PGRES_FATAL_ERROR
        switch status {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK:
            return Self.rows(of: result!)
        default:
            throw error(from: result, conn: conn, statement: sql)
        }
    }

    /// `BEGIN`, the body, `COMMIT`; `ROLLBACK` when the body throws.
    public func transaction<T>(_ body: (JournalSession) throws -> T) throws -> T {
        try execute("BEGIN")
        do {
            let value = try body(self)
            try execute("COMMIT")
            return value
        } catch {
            _ = try? execute("ROLLBACK")
            throw error
        }
    }

    private static func rows(of result: OpaquePointer) -> JournalRows {
        let nfields = Int(PQnfields(result))
        let ntuples = Int(PQntuples(result))
        var columns: [String] = []
        for c in 0..<nfields { columns.append(String(cString: PQfname(result, Int32(c)))) }
        var rows: [[String?]] = []
        rows.reserveCapacity(ntuples)
        for r in 0..<ntuples {
            var row: [String?] = []
            row.reserveCapacity(nfields)
            for c in 0..<nfields {
                if PQgetisnull(result, Int32(r), Int32(c)) != 0 {
                    row.append(nil)
                } else {
                    row.append(String(cString: PQgetvalue(result, Int32(r), Int32(c))))
                }
            }
            rows.append(row)
        }
        let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
        return JournalRows(columns: columns, rows: rows, affected: affected)
    }

    private func error(from result: OpaquePointer?, conn: OpaquePointer, statement: String) -> JournalError {
        func field(_ code: UInt8) -> String? {
            guard let result, let p = PQresultErrorField(result, Int32(code)) else { return nil }
            return String(cString: p)
        }
        let sqlstate = field(UInt8(ascii: "C"))
        let primary = field(UInt8(ascii: "M"))
        let detail = [field(UInt8(ascii: "D")), field(UInt8(ascii: "H")).map { "hint: " + $0 }].compactMap { $0 }.joined(separator: "\n")
        let lost = PQstatus(conn) != CONNECTION_OK
        let message = primary ?? String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines)
        let firstLine = statement.split(separator: "\n").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? ""
        let shortStatement = firstLine.count > 60 ? String(firstLine.prefix(60)) + "..." : firstLine
        return JournalError(lost ? .connectionLost : .query, message.isEmpty ? "statement failed" : message,
                            sqlstate: sqlstate, detail: detail.isEmpty ? nil : detail,
                            context: "\(target): \(shortStatement)").redacting(password)
    }
}

/// One connection to the journal database: owns one `PGconn` and one dedicated thread on which
/// every libpq call for it runs; async callers are bridged with continuations. Frees the
/// connection in `deinit` (on its own thread).
public final class JournalConnection: Sendable {
    private let worker: PGWorkerThread
    private let handle: PGHandle
    private let password: String?
    public let config: JournalConfig

    private init(worker: PGWorkerThread, handle: PGHandle, password: String?, config: JournalConfig) {
        self.worker = worker
        self.handle = handle
        self.password = password
        self.config = config
    }

    deinit {
        let handle = self.handle
        worker.submit {
            if let conn = handle.conn { PQfinish(conn) }
            handle.conn = nil
        }
        worker.stop()
    }

    /// Connects over TLS as configured. `password` is the value of the configured environment
    /// variable (the caller reads it). Refuses a configuration whose sslmode is weaker than its
    /// minimum before sending anything, and a connection that did not end up encrypted when the
    /// mode requires TLS.
    public static func connect(_ config: JournalConfig, password: String?) async throws -> JournalConnection {
        try config.validate()
        try config.checkEnvironment()
        let worker = PGWorkerThread(name: "migplan-pg \(config.target)")
        let handle = PGHandle(nil)
        let params = config.connectionParameters(password: password)
        let target = config.target
        let requiresTLS = config.sslMode.requiresTLS
        do {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                worker.submit {
                    continuation.resume(with: Result { try Self.open(handle: handle, params: params, target: target, requiresTLS: requiresTLS, password: password) })
                }
            }
        } catch {
            worker.submit {
                if let conn = handle.conn { PQfinish(conn) }
                handle.conn = nil
            }
            worker.stop()
            throw error
        }
        return JournalConnection(worker: worker, handle: handle, password: password, config: config)
    }

    private static func open(handle: PGHandle, params: [(String, String)], target: String, requiresTLS: Bool, password: String?) throws {
        let keys = params.map { strdup($0.0) }
        let values = params.map { strdup($0.1) }
        defer {
            for k in keys { free(k) }
            for v in values { free(v) }
        }
        var keyPointers: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) }
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) }
        keyPointers.append(nil)
        valuePointers.append(nil)
        // expand_dbname = 0: dbname is a name, never parsed as a conninfo string.
        let conn = PQconnectdbParams(keyPointers, valuePointers, 0)
        handle.conn = conn
        guard let conn else { throw JournalError(.connection, "out of memory", context: "connecting to \(target)") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let text = String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines)
            throw JournalError(.connection, text.isEmpty ? "connection failed" : text, context: "connecting to \(target)").redacting(password)
        }
        if requiresTLS && PQsslInUse(conn) == 0 {
            throw JournalError(.connection, "the connection is not encrypted although sslmode requires TLS", context: "connecting to \(target)")
        }
    }

    /// Runs `body` on this connection's thread with a session; its statements are synchronous there.
    public func withSession<T: Sendable>(_ body: @escaping @Sendable (JournalSession) throws -> T) async throws -> T {
        let handle = self.handle
        let password = self.password
        let target = config.target
        return try await withCheckedThrowingContinuation { continuation in
            worker.submit {
                let session = JournalSession(handle: handle, password: password, target: target)
                continuation.resume(with: Result { try body(session) })
            }
        }
    }

    /// One statement with bound parameters.
    @discardableResult
    public func execute(_ sql: String, _ params: [String?] = []) async throws -> JournalRows {
        try await withSession { try $0.execute(sql, params) }
    }

    /// Whether the connection is still up (libpq's view; a dead server is noticed on the next statement).
    public func isHealthy() async -> Bool {
        let handle = self.handle
        return await withCheckedContinuation { continuation in
            worker.submit { continuation.resume(returning: handle.conn.map { PQstatus($0) == CONNECTION_OK } ?? false) }
        }
    }

    /// TLS facts of the live connection (for `journal init` output and tests).
    public func tlsInfo() async -> (inUse: Bool, protocolVersion: String?, cipher: String?) {
        let handle = self.handle
        struct Info: Sendable { var inUse: Bool; var proto: String?; var cipher: String? }
        let info: Info = await withCheckedContinuation { continuation in
            worker.submit {
                guard let conn = handle.conn else { return continuation.resume(returning: Info(inUse: false)) }
                let inUse = PQsslInUse(conn) != 0
                let proto = PQsslAttribute(conn, "protocol").map { String(cString: $0) }
                let cipher = PQsslAttribute(conn, "cipher").map { String(cString: $0) }
                continuation.resume(returning: Info(inUse: inUse, proto: proto, cipher: cipher))
            }
        }
        return (info.inUse, info.proto, info.cipher)
    }

    /// Closes the connection now (also done by `deinit`). Safe to call twice.
    public func close() async {
        let handle = self.handle
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            worker.submit {
                if let conn = handle.conn { PQfinish(conn) }
                handle.conn = nil
                continuation.resume()
            }
        }
    }
}
