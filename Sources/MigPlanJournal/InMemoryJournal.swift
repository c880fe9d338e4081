import Foundation

/// A `JournalRecording` that keeps records in memory, in order: for engine tests and dry runs.
/// Records with an id already seen are ignored (as the database does), except steps, whose
/// later record replaces the earlier one.
public actor InMemoryJournal: JournalRecording {
    public private(set) var records: [JournalRecord] = []
    private var seen: Set<String> = []

    public init() {}

    public func beginRun(_ run: RunRecord) async throws { add(.runStarted(run)) }
    public func recordStep(_ step: StepRecord) async throws { add(.step(step)) }
    public func recordAttempt(_ attempt: AttemptRecord) async throws { add(.attempt(attempt)) }
    public func recordMetric(_ metric: MetricRecord) async throws { add(.metric(metric)) }
    public func endRun(_ end: RunEnd) async throws { add(.runEnded(end)) }
    public func appendAudit(_ event: AuditEvent) async throws { add(.audit(event)) }

    private func add(_ record: JournalRecord) {
        if case .step(let step) = record, let i = records.firstIndex(where: { if case .step(let s) = $0 { s.id == step.id } else { false } }) {
            records[i] = record
            return
        }
        guard seen.insert(record.recordID).inserted else { return }
        records.append(record)
    }

    /// The steps as last recorded, in the order they were first recorded.
    public var steps: [StepRecord] { records.compactMap { if case .step(let s) = $0 { s } else { nil } } }
    public var attempts: [AttemptRecord] { records.compactMap { if case .attempt(let a) = $0 { a } else { nil } } }
    public var metrics: [MetricRecord] { records.compactMap { if case .metric(let m) = $0 { m } else { nil } } }
    public var auditEvents: [AuditEvent] { records.compactMap { if case .audit(let e) = $0 { e } else { nil } } }
}
