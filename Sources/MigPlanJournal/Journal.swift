import Foundation
import MigPlanBasics

/// What the engine records. `Journal` writes to PostgreSQL; tests and dry runs may use fakes.
public protocol JournalRecording: Sendable {
    func beginRun(_ run: RunRecord) async throws
    func recordStep(_ step: StepRecord) async throws
    func recordAttempt(_ attempt: AttemptRecord) async throws
    func recordMetric(_ metric: MetricRecord) async throws
    func endRun(_ end: RunEnd) async throws
    func appendAudit(_ event: AuditEvent) async throws
}

/// The journal of runs in PostgreSQL, with a local spool for when the database goes away.
///
/// `open` needs the database (a run is not started without its record). Afterwards, a record
/// that cannot be written because the connection is lost goes to the spool; while the spool
/// holds anything, new records are appended behind it so order is kept, and every few seconds
/// a reconnect is tried that first drains the spool. Every record has a unique id and every
/// write is idempotent, so a record written before a crash and replayed from the spool is
/// stored once.
public actor Journal: JournalRecording {
    public nonisolated let config: JournalConfig
    public nonisolated let spool: JournalSpool
    private let password: String?
    private var connection: JournalConnection?
    private var lastReconnect: ContinuousClock.Instant?
    /// How often a spooling journal retries the database.
    public private(set) var reconnectInterval: Duration = .seconds(2)
    private var reconnectDelay: Duration = .seconds(2)
    public func setReconnectInterval(_ interval: Duration) {
        reconnectInterval = interval
        reconnectDelay = interval
    }

    private init(config: JournalConfig, password: String?, spool: JournalSpool, connection: JournalConnection?) {
        self.config = config
        self.password = password
        self.spool = spool
        self.connection = connection
    }

    /// Connects, checks the schema is current (else: run `migplan journal init`), and flushes
    /// whatever an earlier run left in the spool.
    public static func open(config: JournalConfig, password: String?, spool: JournalSpool? = nil, flushSpool: Bool = true) async throws -> Journal {
        let spool = spool ?? JournalSpool(for: config)
        let connection = try await JournalConnection.connect(config, password: password)
        let version = try await JournalSchema.currentVersion(connection)
        guard version == JournalSchema.latestVersion else {
            throw JournalError(.migration, version < JournalSchema.latestVersion
                ? "the journal schema is at version \(version), migplan needs \(JournalSchema.latestVersion): run `migplan journal init`"
                : "the journal schema is at version \(version), newer than this migplan (\(JournalSchema.latestVersion)): upgrade migplan",
                context: config.target)
        }
        let journal = Journal(config: config, password: password, spool: spool, connection: connection)
        if flushSpool { try await journal.flush() }
        return journal
    }

    /// Whether records are currently going to the spool.
    public var isSpooling: Bool { connection == nil || !spool.isEmpty }

    /// The live connection (for locks, verification and reading). Throws when the database is out of reach.
    public func liveConnection() async throws -> JournalConnection {
        if let connection { return connection }
        let c = try await JournalConnection.connect(config, password: password)
        connection = c
        return c
    }

    // MARK: Recording

    public func beginRun(_ run: RunRecord) async throws { try await write(.runStarted(run)) }
    public func recordStep(_ step: StepRecord) async throws { try await write(.step(step)) }
    public func recordAttempt(_ attempt: AttemptRecord) async throws { try await write(.attempt(attempt)) }
    public func recordMetric(_ metric: MetricRecord) async throws { try await write(.metric(metric)) }
    public func endRun(_ end: RunEnd) async throws { try await write(.runEnded(end)) }
    public func appendAudit(_ event: AuditEvent) async throws { try await write(.audit(event)) }

    /// Writes one record to the database, or to the spool when the database is out of reach.
    /// Throws only for errors that spooling cannot fix (the server rejected the record, the
    /// spool cannot be written).
    public func write(_ record: JournalRecord) async throws {
        if connection == nil || !spool.isEmpty {
            await tryReconnectAndFlush()
        }
        if let connection, spool.isEmpty {
            do {
                try await connection.withSession { session in try Self.apply([record], in: session) }
                return
            } catch let error as JournalError where error.isConnectionFailure {
                self.connection = nil
                lastReconnect = .now
            }
        }
        try spool.append(record)
    }

    private func tryReconnectAndFlush() async {
        if let last = lastReconnect, ContinuousClock.now - last < reconnectDelay { return }
        lastReconnect = .now
        do {
            try await flush()
            reconnectDelay = reconnectInterval
        } catch {
            // Still out of reach (or a record was refused): keep spooling, and try less often
            // (an unreachable host costs a connect timeout per try); `migplan journal flush` reports why.
            reconnectDelay = min(reconnectDelay * 2, max(reconnectInterval, .seconds(60)))
        }
    }

    /// Writes every spooled record to the database, then empties the spool. Returns how many
    /// records were written (records already present are skipped by their ids).
    @discardableResult
    public func flush() async throws -> Int {
        let connection = try await liveConnection()
        let spool = self.spool
        do {
            return try await connection.withSession { session in
                try spool.drain { records in
                    for record in records {
                        do {
                            try Self.apply([record], in: session)
                        } catch let error as JournalError where !error.isConnectionFailure {
                            // The server refuses this record (it always will): keep it aside
                            // rather than let it block every record behind it.
                            try spool.reject(record, reason: error.description)
                        }
                    }
                }
            }
        } catch let error as JournalError where error.isConnectionFailure {
            self.connection = nil
            throw error
        }
    }

    /// Closes the connection; spooled records stay in the spool.
    public func close() async {
        await connection?.close()
        connection = nil
    }

    // MARK: Statements

    static func text(_ d: Double?) -> String? { d.flatMap { $0.isFinite ? String($0) : nil } }
    static func time(_ d: Date?) -> String? { d.map(JournalTime.format) }

    static func apply(_ records: [JournalRecord], in s: JournalSession) throws {
        for record in records {
            switch record {
            case .runStarted(let r):
                try s.execute("""
                    INSERT INTO runs (id, plan_name, plan_path, plan_sha256, git_commit, operator, migplan_version, command, started_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING
                    """, [r.id, r.planName, r.planPath, r.planSHA256, r.gitCommit, r.operator, r.migplanVersion, r.command, time(r.startedAt)])
            case .runEnded(let e):
                try s.execute("""
                    UPDATE runs SET ended_at = $2, outcome = $3, detail = $4, end_record_id = $5
                    WHERE id = $1 AND (end_record_id IS NULL OR end_record_id = $5)
                    """, [e.runID, time(e.endedAt), e.outcome, e.detail, e.id])
            case .step(let st):
                try s.execute("""
                    INSERT INTO steps (id, run_id, step_key, kind, host, container, status, started_at, ended_at, detail)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,
                        host = coalesce(EXCLUDED.host, steps.host),
                        container = coalesce(EXCLUDED.container, steps.container),
                        started_at = coalesce(steps.started_at, EXCLUDED.started_at),
                        ended_at = coalesce(EXCLUDED.ended_at, steps.ended_at),
                        detail = coalesce(EXCLUDED.detail, steps.detail)
                    """, [st.id, st.runID, st.stepKey, st.kind, st.host, st.container, st.status, time(st.startedAt), time(st.endedAt), st.detail])
            case .attempt(let a):
                try s.execute("""
                    INSERT INTO attempts (id, run_id, step_id, number, host, command, exit_status, stdout_tail, stderr_tail, started_at, duration_s, error)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING
                    """, [a.id, a.runID, a.stepID, String(a.number), a.host, a.command, a.exitStatus.map { String($0) },
                          a.stdoutTail, a.stderrTail, time(a.startedAt), text(a.durationSeconds) ?? "0", a.error])
            case .metric(let m):
                try s.execute("""
                    INSERT INTO metrics (id, run_id, container, flow, total_migration_time_s, downtime_s, file_transfer_duration_s,
                        transfer_size_bytes, upload_speed_bytes_per_s, checkpoint_duration_s, resume_duration_s,
                        kill_duration_s, start_duration_s, recorded_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING
                    """, [m.id, m.runID, m.container, m.flow, text(m.totalMigrationTime), text(m.downtime), text(m.fileTransferDuration),
                          m.transferSizeBytes.map { String($0) }, text(m.uploadSpeedBytesPerSecond), text(m.checkpointDuration),
                          text(m.resumeDuration), text(m.killDuration), text(m.startDuration), time(m.recordedAt)])
            case .audit(let event):
                try appendAudit(event, in: s)
            }
        }
    }

    static let auditColumns = "id, record_id, run_id, recorded_at, actor, action, subject, detail, prev_hash, row_hash"

    static func auditRow(_ r: [String?]) -> AuditRow {
        AuditRow(id: Int64(r[0] ?? "0") ?? 0, recordID: r[1] ?? "", runID: r[2], recordedAt: r[3] ?? "", actor: r[4] ?? "",
                 action: r[5] ?? "", subject: r[6] ?? "", detail: r[7] ?? "", prevHash: r[8] ?? "", rowHash: r[9] ?? "")
    }

    /// Appends one audit row, chained to the current last row, under an advisory transaction
    /// lock so concurrent writers cannot fork the chain. A record id already present is skipped.
    static func appendAudit(_ event: AuditEvent, in s: JournalSession) throws {
        try s.transaction { s in
            try s.execute("SELECT pg_advisory_xact_lock(\(JournalSchema.auditLockClass), 0)")
            if try s.execute("SELECT 1 FROM audit WHERE record_id = $1", [event.id]).count > 0 { return }
            let last = try s.execute("SELECT \(auditColumns) FROM audit ORDER BY id DESC LIMIT 1").rows.first.map(auditRow)
            let row = AuditChain.makeRow(after: last, event: event)
            try s.execute("""
                INSERT INTO audit (\(auditColumns)) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (record_id) DO NOTHING
                """, [String(row.id), row.recordID, row.runID, row.recordedAt, row.actor, row.action, row.subject, row.detail,
                      row.prevHash, row.rowHash])
        }
    }

    // MARK: Verification

    /// Problems with the audit table's database-level protection: its append-only triggers
    /// missing or disabled. Empty when both are in place and enabled.
    public func auditProtectionProblems() async throws -> [String] {
        let connection = try await liveConnection()
        let rows = try await connection.execute("""
            SELECT t.tgname, t.tgenabled::text FROM pg_trigger t
            WHERE t.tgrelid = to_regclass('audit') AND NOT t.tgisinternal
            """)
        var state: [String: String] = [:]
        for r in rows.rows { if let name = r[0] { state[name] = r[1] ?? "" } }
        var problems: [String] = []
        for name in ["audit_append_only", "audit_no_truncate"] {
            switch state[name] {
            case nil: problems.append("trigger \(name) on the audit table is missing: rows can be changed without a superuser")
            case "D": problems.append("trigger \(name) on the audit table is disabled: rows can be changed without a superuser")
            default: break
            }
        }
        return problems
    }

    /// Reads the whole audit table and checks its hash chain (and the anchor from an earlier verify).
    public func verifyAudit(anchor: AuditChain.Anchor? = nil) async throws -> AuditChain.Report {
        let connection = try await liveConnection()
        let rows = try await connection.execute("SELECT \(Self.auditColumns) FROM audit ORDER BY id")
        return AuditChain.verify(rows.rows.map(Self.auditRow), anchor: anchor)
    }
}
