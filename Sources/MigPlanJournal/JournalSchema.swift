import Foundation
import MigPlanBasics

/// migplan's tables, created and upgraded by numbered migrations recorded in `schema_migrations`.
/// `migrate` is idempotent: applied versions are skipped, and concurrent callers serialise on an
/// advisory transaction lock.
public enum JournalSchema {
    public struct Migration: Sendable {
        public var version: Int
        public var name: String
        public var statements: [String]
    }

    /// Advisory-lock class ids of migplan (first key of the two-key advisory lock functions).
    static let migrationLockClass = "770001"
    static let auditLockClass = "770002"
    static let containerLockClass = "770003"

    public static let migrations: [Migration] = [
        Migration(version: 1, name: "runs, steps, attempts, metrics", statements: [
            """
            CREATE TABLE runs (
                id text PRIMARY KEY,
                plan_name text NOT NULL,
                plan_path text,
                plan_sha256 text NOT NULL,
                git_commit text,
                operator text NOT NULL,
                migplan_version text NOT NULL,
                command text NOT NULL,
                started_at timestamptz NOT NULL,
                ended_at timestamptz,
                outcome text NOT NULL DEFAULT 'running',
                detail text,
                end_record_id text
            )
            """,
            "CREATE INDEX runs_started_at ON runs (started_at DESC)",
            "CREATE INDEX runs_plan_name ON runs (plan_name)",
            """
            CREATE TABLE steps (
                id text PRIMARY KEY,
                run_id text NOT NULL REFERENCES runs (id),
                step_key text NOT NULL,
                kind text NOT NULL,
                host text,
                container text,
                status text NOT NULL,
                started_at timestamptz,
                ended_at timestamptz,
                detail text
            )
            """,
            "CREATE INDEX steps_run_id ON steps (run_id)",
            """
            CREATE TABLE attempts (
                id text PRIMARY KEY,
                run_id text NOT NULL REFERENCES runs (id),
                step_id text NOT NULL REFERENCES steps (id),
                number integer NOT NULL,
                host text,
                command text,
                exit_status integer,
                stdout_tail text,
                stderr_tail text,
                started_at timestamptz NOT NULL,
                duration_s double precision NOT NULL,
                error text
            )
            """,
            "CREATE INDEX attempts_step_id ON attempts (step_id)",
            """
            CREATE TABLE metrics (
                id text PRIMARY KEY,
                run_id text NOT NULL REFERENCES runs (id),
                container text NOT NULL,
                flow text NOT NULL,
                total_migration_time_s double precision,
                downtime_s double precision,
                file_transfer_duration_s double precision,
                transfer_size_bytes bigint,
                upload_speed_bytes_per_s double precision,
                checkpoint_duration_s double precision,
                resume_duration_s double precision,
                kill_duration_s double precision,
                start_duration_s double precision,
                recorded_at timestamptz NOT NULL
            )
            """,
            "CREATE INDEX metrics_run_id ON metrics (run_id)",
        ]),
        Migration(version: 2, name: "hash-chained append-only audit", statements: [
            """
            CREATE TABLE audit (
                id bigint PRIMARY KEY,
                record_id text NOT NULL UNIQUE,
                run_id text,
                recorded_at text NOT NULL,
                actor text NOT NULL,
                action text NOT NULL,
                subject text NOT NULL,
                detail text NOT NULL,
                prev_hash text NOT NULL,
                row_hash text NOT NULL
            )
            """,
            """
            CREATE FUNCTION migplan_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'migplan audit table is append-only (% refused)', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """,
            """
            CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
                FOR EACH ROW EXECUTE FUNCTION migplan_audit_append_only()
            """,
            """
            CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
                FOR EACH STATEMENT EXECUTE FUNCTION migplan_audit_append_only()
            """,
            "REVOKE UPDATE, DELETE, TRUNCATE ON audit FROM PUBLIC",
        ]),
        Migration(version: 3, name: "container locks", statements: [
            """
            CREATE TABLE locks (
                container text PRIMARY KEY,
                run_id text NOT NULL,
                holder text NOT NULL,
                acquired_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ]),
    ]

    public static var latestVersion: Int { migrations.map(\.version).max() ?? 0 }

    /// Applies every missing migration; returns the versions applied now (empty when up to date).
    @discardableResult
    public static func migrate(_ connection: JournalConnection) async throws -> [Int] {
        let schema = connection.config.schema
        return try await connection.withSession { session in
            try session.transaction { s in
                try s.execute("SELECT pg_advisory_xact_lock(\(migrationLockClass), 0)")
                if let schema {
                    // The name passed `JournalConfig.isPlainIdentifier`; identifiers cannot be bound.
                    try s.execute("CREATE SCHEMA IF NOT EXISTS \(schema)")
                }
                try s.execute("""
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(),
                        migplan_version text NOT NULL
                    )
                    """)
                let applied = Set(try s.execute("SELECT version FROM schema_migrations").rows.compactMap { $0[0].flatMap { Int($0) } })
                if let newest = applied.max(), newest > latestVersion {
                    throw JournalError(.migration, "the journal schema is at version \(newest), newer than this migplan knows (\(latestVersion)); upgrade migplan")
                }
                var done: [Int] = []
                for m in migrations where !applied.contains(m.version) {
                    for statement in m.statements {
                        do {
                            try s.execute(statement)
                        } catch var error as JournalError {
                            error.context = "migration \(m.version) (\(m.name))"
                            if error.code == .query { error.code = .migration }
                            throw error
                        }
                    }
                    try s.execute("INSERT INTO schema_migrations (version, name, migplan_version) VALUES ($1, $2, $3)",
                                  [String(m.version), m.name, MigPlanVersion.current])
                    done.append(m.version)
                }
                return done
            }
        }
    }

    /// The schema's current version (0 when `journal init` never ran).
    public static func currentVersion(_ connection: JournalConnection) async throws -> Int {
        let rows = try await connection.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
        guard rows[0, "present"] == "t" else { return 0 }
        let v = try await connection.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
        return Int(v[0, "v"] ?? "0") ?? 0
    }
}
