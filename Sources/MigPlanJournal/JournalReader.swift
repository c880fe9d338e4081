import Foundation

/// Reading the journal back: `migplan runs` and `migplan show`.
public struct JournalReader: Sendable {
    public let connection: JournalConnection
    public init(connection: JournalConnection) { self.connection = connection }

    public struct Run: Sendable, Equatable, Codable {
        public var id: String
        public var planName: String
        public var planPath: String?
        public var planSHA256: String
        public var gitCommit: String?
        public var `operator`: String
        public var migplanVersion: String
        public var command: String
        public var startedAt: String
        public var endedAt: String?
        public var durationSeconds: Double?
        public var outcome: String
        public var detail: String?
    }

    public struct Step: Sendable, Equatable, Codable {
        public var id: String
        public var stepKey: String
        public var kind: String
        public var host: String?
        public var container: String?
        public var status: String
        public var startedAt: String?
        public var endedAt: String?
        public var durationSeconds: Double?
        public var detail: String?
        public var attempts: [Attempt]
    }

    public struct Attempt: Sendable, Equatable, Codable {
        public var id: String
        public var number: Int
        public var host: String?
        public var command: String?
        public var exitStatus: Int?
        public var startedAt: String
        public var durationSeconds: Double
        public var error: String?
        public var stdoutTail: String?
        public var stderrTail: String?
    }

    public struct Metric: CarriesPaperMetrics, Sendable, Equatable, Codable {
        public var container: String
        public var flow: String
        public var paperMetrics: PaperMetrics

        private enum CodingKeys: String, CodingKey { case container, flow }

        init(container: String, flow: String, paperMetrics: PaperMetrics) {
            self.container = container
            self.flow = flow
            self.paperMetrics = paperMetrics
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            container = try c.decode(String.self, forKey: .container)
            flow = try c.decode(String.self, forKey: .flow)
            paperMetrics = try PaperMetrics(from: decoder)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(container, forKey: .container)
            try c.encode(flow, forKey: .flow)
            try paperMetrics.encode(to: encoder)   // flat, beside container and flow
        }
    }

    public struct RunDetail: Sendable, Equatable, Codable {
        public var run: Run
        public var steps: [Step]
        public var metrics: [Metric]
        /// The run this one resumed (`apply --resume`), if any.
        public var resumes: String? = nil
        /// Runs that resumed this one.
        public var resumedBy: [String]? = nil
    }

    static func ts(_ column: String) -> String {
        "to_char(\(column) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    }

    static let runColumns = """
        id, plan_name, plan_path, plan_sha256, git_commit, operator, migplan_version, command,
        \(ts("started_at")) AS started, \(ts("ended_at")) AS ended,
        extract(epoch FROM ended_at - started_at)::float8 AS duration, outcome, detail
        """

    static func run(_ r: [String?]) -> Run {
        Run(id: r[0] ?? "", planName: r[1] ?? "", planPath: r[2], planSHA256: r[3] ?? "", gitCommit: r[4], operator: r[5] ?? "",
            migplanVersion: r[6] ?? "", command: r[7] ?? "", startedAt: r[8] ?? "", endedAt: r[9],
            durationSeconds: r[10].flatMap(Double.init), outcome: r[11] ?? "", detail: r[12])
    }

    /// The most recent runs, newest first, optionally of one plan.
    public func runs(planName: String? = nil, limit: Int = 20) async throws -> [Run] {
        let rows = try await connection.execute("""
            SELECT \(Self.runColumns) FROM runs WHERE ($1::text IS NULL OR plan_name = $1)
            ORDER BY started_at DESC, id LIMIT $2
            """, [planName, String(max(0, limit))])
        return rows.rows.map(Self.run)
    }

    /// One run with its steps, attempts and metrics. `id` may be a unique prefix (as git's).
    public func run(_ id: String) async throws -> RunDetail {
        let matches = try await connection.execute(
            "SELECT \(Self.runColumns) FROM runs WHERE id = $1 OR id LIKE $2 ORDER BY (id = $1) DESC LIMIT 2",
            [id, Self.likePrefix(id)])
        guard let first = matches.rows.first else { throw JournalError(.notFound, "no run \(id) in the journal") }
        let run = Self.run(first)
        if run.id != id && matches.count > 1 {
            throw JournalError(.notFound, "run id prefix \(id) is ambiguous; give more characters")
        }
        let stepRows = try await connection.execute("""
            SELECT id, step_key, kind, host, container, status, \(Self.ts("started_at")), \(Self.ts("ended_at")),
                   extract(epoch FROM ended_at - started_at)::float8, detail
            FROM steps WHERE run_id = $1 ORDER BY started_at NULLS LAST, step_key
            """, [run.id])
        let attemptRows = try await connection.execute("""
            SELECT id, step_id, number, host, command, exit_status, \(Self.ts("started_at")), duration_s, error, stdout_tail, stderr_tail
            FROM attempts WHERE run_id = $1 ORDER BY started_at, number
            """, [run.id])
        var attemptsByStep: [String: [Attempt]] = [:]
        for r in attemptRows.rows {
            let a = Attempt(id: r[0] ?? "", number: Int(r[2] ?? "0") ?? 0, host: r[3], command: r[4], exitStatus: r[5].flatMap { Int($0) },
                            startedAt: r[6] ?? "", durationSeconds: Double(r[7] ?? "0") ?? 0, error: r[8], stdoutTail: r[9], stderrTail: r[10])
            attemptsByStep[r[1] ?? "", default: []].append(a)
        }
        let steps = stepRows.rows.map { r in
            Step(id: r[0] ?? "", stepKey: r[1] ?? "", kind: r[2] ?? "", host: r[3], container: r[4], status: r[5] ?? "",
                 startedAt: r[6], endedAt: r[7], durationSeconds: r[8].flatMap(Double.init), detail: r[9],
                 attempts: attemptsByStep[r[0] ?? ""] ?? [])
        }
        let metricRows = try await connection.execute("""
            SELECT container, flow, total_migration_time_s, downtime_s, file_transfer_duration_s, transfer_size_bytes,
                   upload_speed_bytes_per_s, checkpoint_duration_s, resume_duration_s, kill_duration_s, start_duration_s
            FROM metrics WHERE run_id = $1 ORDER BY container, recorded_at
            """, [run.id])
        let metrics = metricRows.rows.map { r in
            Metric(container: r[0] ?? "", flow: r[1] ?? "", paperMetrics: PaperMetrics(
                totalMigrationTime: r[2].flatMap(Double.init), downtime: r[3].flatMap(Double.init),
                fileTransferDuration: r[4].flatMap(Double.init), transferSizeBytes: r[5].flatMap { Int64($0) },
                uploadSpeedBytesPerSecond: r[6].flatMap(Double.init), checkpointDuration: r[7].flatMap(Double.init),
                resumeDuration: r[8].flatMap(Double.init), killDuration: r[9].flatMap(Double.init),
                startDuration: r[10].flatMap(Double.init)))
        }
        let resumption = try await resumption(of: run.id)
        return RunDetail(run: run, steps: steps, metrics: metrics, resumes: resumption.resumes,
                         resumedBy: resumption.resumedBy.isEmpty ? nil : resumption.resumedBy)
    }

    /// `prefix%` with LIKE's metacharacters escaped.
    static func likePrefix(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_") + "%"
    }
}
