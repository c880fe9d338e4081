import Foundation
import MigPlanBasics

/// A new unique record id (random UUID v4 text). Every record carries one, so writing a record
/// twice (a flush retried after a crash) never duplicates it.
public func newJournalID() -> String {
    var b = secureRandomBytes(16)
    b[6] = (b[6] & 0x0f) | 0x40
    b[8] = (b[8] & 0x3f) | 0x80
    let hex = b.map { String(format: "%02x", $0) }.joined()
    let c = Array(hex)
    return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
}

/// A run started: one `migplan apply` of one plan.
public struct RunRecord: Codable, Sendable, Equatable {
    public var id: String
    public var planName: String
    /// The plan file as given (for people; not used for identity).
    public var planPath: String?
    /// SHA-256 of the plan file's bytes.
    public var planSHA256: String
    /// `git rev-parse HEAD` of the repository holding the plan, when there is one.
    public var gitCommit: String?
    public var `operator`: String
    public var migplanVersion: String
    public var command: String
    public var startedAt: Date

    public init(id: String = newJournalID(), planName: String, planPath: String? = nil, planSHA256: String,
                gitCommit: String? = nil, operator: String = RunRecord.currentOperator(),
                migplanVersion: String = MigPlanVersion.current, command: String = "apply", startedAt: Date = Date()) {
        self.id = id
        self.planName = planName
        self.planPath = planPath
        self.planSHA256 = planSHA256
        self.gitCommit = gitCommit
        self.operator = `operator`
        self.migplanVersion = migplanVersion
        self.command = command
        self.startedAt = startedAt
    }

    /// A record for the plan file at `url`: its SHA-256 and, when it lives in a git work tree, the commit.
    public static func forPlanFile(_ url: URL, planName: String, command: String = "apply", id: String = newJournalID()) throws -> RunRecord {
        let data = try Data(contentsOf: url)
        return RunRecord(id: id, planName: planName, planPath: url.path, planSHA256: SHA256Hasher.hash(data).hex,
                         gitCommit: gitCommit(containing: url), command: command)
    }

    /// The login name of whoever runs migplan (`SUDO_USER` first: the person behind `sudo`).
    public static func currentOperator() -> String {
        let env = ProcessInfo.processInfo.environment
        if let s = env["SUDO_USER"], !s.isEmpty { return s }
        if let s = env["USER"], !s.isEmpty { return s }
        if let pw = getpwuid(getuid()), let name = pw.pointee.pw_name { return String(cString: name) }
        return "uid \(getuid())"
    }

    /// HEAD of the git repository containing `file`, or nil (no git, not a repository).
    public static func gitCommit(containing file: URL) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git", "-C", file.deletingLastPathComponent().path, "rev-parse", "--verify", "-q", "HEAD"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.count == 40 ? text : nil
    }
}

/// A run ended.
public struct RunEnd: Codable, Sendable, Equatable {
    public var id: String
    public var runID: String
    /// `succeeded`, `unchanged`, `failed`, `rolled-back`, `interrupted`.
    public var outcome: String
    public var endedAt: Date
    public var detail: String?

    public init(id: String = newJournalID(), runID: String, outcome: String, endedAt: Date = Date(), detail: String? = nil) {
        self.id = id
        self.runID = runID
        self.outcome = outcome
        self.endedAt = endedAt
        self.detail = detail
    }
}

/// A step's state. Recorded when the step starts and again when it ends (same `id`: the row is
/// updated, never duplicated).
public struct StepRecord: Codable, Sendable, Equatable {
    public var id: String
    public var runID: String
    /// The step's id in the graph (e.g. `face-1.checkpoint`).
    public var stepKey: String
    public var kind: String
    public var host: String?
    public var container: String?
    /// `running`, `changed`, `unchanged`, `failed`, `skipped`, `rolled-back`.
    public var status: String
    public var startedAt: Date?
    public var endedAt: Date?
    public var detail: String?

    public init(id: String = newJournalID(), runID: String, stepKey: String, kind: String, host: String? = nil,
                container: String? = nil, status: String, startedAt: Date? = Date(), endedAt: Date? = nil, detail: String? = nil) {
        self.id = id
        self.runID = runID
        self.stepKey = stepKey
        self.kind = kind
        self.host = host
        self.container = container
        self.status = status
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.detail = detail
    }
}

/// One attempt of a step: a command on a host and what it gave back.
public struct AttemptRecord: Codable, Sendable, Equatable {
    public var id: String
    public var runID: String
    public var stepID: String
    public var number: Int
    public var host: String?
    /// The command as run, secrets already replaced (see `JournalRedaction`).
    public var command: String?
    public var exitStatus: Int32?
    public var stdoutTail: String?
    public var stderrTail: String?
    public var startedAt: Date
    public var durationSeconds: Double
    public var error: String?

    public init(id: String = newJournalID(), runID: String, stepID: String, number: Int, host: String? = nil,
                command: String? = nil, exitStatus: Int32? = nil, stdoutTail: String? = nil, stderrTail: String? = nil,
                startedAt: Date, durationSeconds: Double, error: String? = nil) {
        self.id = id
        self.runID = runID
        self.stepID = stepID
        self.number = number
        self.host = host
        self.command = command
        self.exitStatus = exitStatus
        self.stdoutTail = stdoutTail
        self.stderrTail = stderrTail
        self.startedAt = startedAt
        self.durationSeconds = durationSeconds
        self.error = error
    }

    /// The tails the journal keeps of a command's output (the last 4 KiB of each stream).
    public static func tail(_ bytes: [UInt8], maxBytes: Int = 4096) -> String {
        String(decoding: bytes.suffix(maxBytes), as: UTF8.self)
    }
}

/// The paper's metrics (section 4.3) of one container migration; durations in seconds. The one
/// definition of these fields: records, reports and the calculator carry it (`CarriesPaperMetrics`).
public struct PaperMetrics: Codable, Sendable, Hashable {
    public var totalMigrationTime: Double?
    public var downtime: Double?
    public var fileTransferDuration: Double?
    public var transferSizeBytes: Int64?
    public var uploadSpeedBytesPerSecond: Double?
    public var checkpointDuration: Double?
    public var resumeDuration: Double?
    public var killDuration: Double?
    public var startDuration: Double?

    public init(totalMigrationTime: Double? = nil, downtime: Double? = nil, fileTransferDuration: Double? = nil,
                transferSizeBytes: Int64? = nil, uploadSpeedBytesPerSecond: Double? = nil,
                checkpointDuration: Double? = nil, resumeDuration: Double? = nil,
                killDuration: Double? = nil, startDuration: Double? = nil) {
        self.totalMigrationTime = totalMigrationTime
        self.downtime = downtime
        self.fileTransferDuration = fileTransferDuration
        self.transferSizeBytes = transferSizeBytes
        self.uploadSpeedBytesPerSecond = uploadSpeedBytesPerSecond
        self.checkpointDuration = checkpointDuration
        self.resumeDuration = resumeDuration
        self.killDuration = killDuration
        self.startDuration = startDuration
    }
}

/// A value that carries `PaperMetrics`: its fields read and write as `value.downtime`, and in JSON
/// they stand flat beside the value's own keys (`encodePaperMetrics`/`decodePaperMetrics`).
@dynamicMemberLookup
public protocol CarriesPaperMetrics {
    var paperMetrics: PaperMetrics { get set }
}

extension CarriesPaperMetrics {
    public subscript<T>(dynamicMember keyPath: WritableKeyPath<PaperMetrics, T>) -> T {
        get { paperMetrics[keyPath: keyPath] }
        set { paperMetrics[keyPath: keyPath] = newValue }
    }
}

/// The paper's metrics for one container migration, as the journal stores them.
public struct MetricRecord: CarriesPaperMetrics, Codable, Sendable, Equatable {
    public var id: String
    public var runID: String
    /// The container (or `*` for a whole multi-container move).
    public var container: String
    /// `stateful` or `stateless`.
    public var flow: String
    public var paperMetrics: PaperMetrics
    public var recordedAt: Date

    public init(id: String = newJournalID(), runID: String, container: String, flow: String,
                metrics: PaperMetrics, recordedAt: Date = Date()) {
        self.id = id
        self.runID = runID
        self.container = container
        self.flow = flow
        self.paperMetrics = metrics
        self.recordedAt = recordedAt
    }

    public init(id: String = newJournalID(), runID: String, container: String, flow: String,
                totalMigrationTime: Double? = nil, downtime: Double? = nil, fileTransferDuration: Double? = nil,
                transferSizeBytes: Int64? = nil, uploadSpeedBytesPerSecond: Double? = nil,
                checkpointDuration: Double? = nil, resumeDuration: Double? = nil,
                killDuration: Double? = nil, startDuration: Double? = nil, recordedAt: Date = Date()) {
        self.init(id: id, runID: runID, container: container, flow: flow,
                  metrics: PaperMetrics(totalMigrationTime: totalMigrationTime, downtime: downtime,
                                        fileTransferDuration: fileTransferDuration, transferSizeBytes: transferSizeBytes,
                                        uploadSpeedBytesPerSecond: uploadSpeedBytesPerSecond,
                                        checkpointDuration: checkpointDuration, resumeDuration: resumeDuration,
                                        killDuration: killDuration, startDuration: startDuration),
                  recordedAt: recordedAt)
    }

    private enum CodingKeys: String, CodingKey { case id, runID, container, flow, recordedAt }

    // Flat JSON, as spool files written before PaperMetrics existed.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        runID = try c.decode(String.self, forKey: .runID)
        container = try c.decode(String.self, forKey: .container)
        flow = try c.decode(String.self, forKey: .flow)
        recordedAt = try c.decode(Date.self, forKey: .recordedAt)
        paperMetrics = try PaperMetrics(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(runID, forKey: .runID)
        try c.encode(container, forKey: .container)
        try c.encode(flow, forKey: .flow)
        try c.encode(recordedAt, forKey: .recordedAt)
        try paperMetrics.encode(to: encoder)   // into the same keyed container: flat
    }
}

/// One audited action (who did what to what). Stored in the hash-chained `audit` table.
public struct AuditEvent: Codable, Sendable, Equatable {
    public var id: String
    public var runID: String?
    public var at: Date
    public var actor: String
    public var action: String
    public var subject: String
    public var detail: String

    public init(id: String = newJournalID(), runID: String?, at: Date = Date(), actor: String = RunRecord.currentOperator(),
                action: String, subject: String, detail: String = "") {
        self.id = id
        self.runID = runID
        self.at = at
        self.actor = actor
        self.action = action
        self.subject = subject
        self.detail = detail
    }
}

/// Anything the journal writes; the unit of the spool.
public enum JournalRecord: Sendable, Equatable {
    case runStarted(RunRecord)
    case runEnded(RunEnd)
    case step(StepRecord)
    case attempt(AttemptRecord)
    case metric(MetricRecord)
    case audit(AuditEvent)

    /// The record's unique id (what makes a replay idempotent).
    public var recordID: String {
        switch self {
        case .runStarted(let r): return r.id
        case .runEnded(let r): return r.id
        case .step(let r): return r.id
        case .attempt(let r): return r.id
        case .metric(let r): return r.id
        case .audit(let r): return r.id
        }
    }

    public var kind: String {
        switch self {
        case .runStarted: return "run-started"
        case .runEnded: return "run-ended"
        case .step: return "step"
        case .attempt: return "attempt"
        case .metric: return "metric"
        case .audit: return "audit"
        }
    }
}

extension JournalRecord: Codable {
    private enum Keys: String, CodingKey { case kind, record }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        let kind = try c.decode(String.self, forKey: .kind)
        switch kind {
        case "run-started": self = .runStarted(try c.decode(RunRecord.self, forKey: .record))
        case "run-ended": self = .runEnded(try c.decode(RunEnd.self, forKey: .record))
        case "step": self = .step(try c.decode(StepRecord.self, forKey: .record))
        case "attempt": self = .attempt(try c.decode(AttemptRecord.self, forKey: .record))
        case "metric": self = .metric(try c.decode(MetricRecord.self, forKey: .record))
        case "audit": self = .audit(try c.decode(AuditEvent.self, forKey: .record))
        default: throw DecodingError.dataCorruptedError(forKey: .kind, in: c, debugDescription: "unknown record kind \(kind)")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(kind, forKey: .kind)
        switch self {
        case .runStarted(let r): try c.encode(r, forKey: .record)
        case .runEnded(let r): try c.encode(r, forKey: .record)
        case .step(let r): try c.encode(r, forKey: .record)
        case .attempt(let r): try c.encode(r, forKey: .record)
        case .metric(let r): try c.encode(r, forKey: .record)
        case .audit(let r): try c.encode(r, forKey: .record)
        }
    }
}

/// Replaces secrets in command lines and output before they reach the journal.
public enum JournalRedaction {
    public static let marker = "[REDACTED]"

    /// `text` with every occurrence of each non-empty secret replaced by `[REDACTED]`, and the
    /// values of `PASSWORD=`/`PASSPHRASE=`/`TOKEN=`/`SECRET=`-like assignments hidden.
    public static func redact(_ text: String, secrets: [String] = []) -> String {
        var out = text
        for s in secrets.sorted(by: { $0.utf8.count > $1.utf8.count }) where !s.isEmpty {
            out = out.replacingOccurrences(of: s, with: marker)
        }
        // NAME=value where NAME mentions a secret-like word.
        let pattern = #"(?i)\b([A-Z0-9_]*(PASSWORD|PASSWD|PASSPHRASE|TOKEN|SECRET)[A-Z0-9_]*)=('[^']*'|"[^"]*"|\S+)"#
        if let regex = try? NSRegularExpression(pattern: pattern) {
            let range = NSRange(out.startIndex..., in: out)
            out = regex.stringByReplacingMatches(in: out, range: range, withTemplate: "$1=\(marker)")
        }
        return out
    }
}

/// Timestamps as the journal writes them: UTC, microseconds, ISO 8601 (`2026-11-25T20:32:47.123456Z`).
public enum JournalTime {
    public static func format(_ date: Date) -> String {
        let micros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        var seconds = time_t((micros / 1_000_000).rounded(.down))
        let fraction = Int(micros - Double(seconds) * 1_000_000)
        var tm = tm()
        gmtime_r(&seconds, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1,
                      Int(tm.tm_mday), Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), fraction)
    }
}
