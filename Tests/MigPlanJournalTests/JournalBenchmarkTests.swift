import Foundation
@testable import MigPlanJournal
import Testing

/// Rough figures for docs/journal.md; runs only with MIGPLAN_JOURNAL_BENCH=1 (lab needed).
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["MIGPLAN_JOURNAL_BENCH"] == "1", "MIGPLAN_JOURNAL_BENCH=1"))
struct JournalBenchmarkTests {
    static func measure(_ label: String, count: Int, _ body: () async throws -> Void) async rethrows {
        let start = ContinuousClock.now
        try await body()
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print(String(format: "BENCH %@: %d in %.3f s = %.0f/s (%.3f ms each)", label, count, seconds, Double(count) / seconds, seconds * 1000 / Double(count)))
    }

    @Test func journalWriteSpoolAndVerifyRates() async throws {
        let schema = try await LabDatabase.freshSchema()
        let dir = JournalSpoolTests.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(),
                                             spool: JournalSpool(directory: dir))
        let run = RunRecord(planName: "bench", planSHA256: String(repeating: "d", count: 64))
        try await journal.beginRun(run)
        let n = 1000
        await Self.measure("connect (TLS 1.3, SCRAM)", count: 20) {
            for _ in 0..<20 { let c = try? await LabDatabase.connect(); await c?.close() }
        }
        try await Self.measure("step records to PostgreSQL", count: n) {
            for i in 0..<n { try await journal.recordStep(StepRecord(runID: run.id, stepKey: "s\(i)", kind: "bench", status: "changed")) }
        }
        try await Self.measure("audit rows (chained, locked tx)", count: n) {
            for i in 0..<n { try await journal.appendAudit(AuditEvent(runID: run.id, action: "bench", subject: "s\(i)")) }
        }
        await Self.measure("journal verify of \(n) rows", count: 1) {
            #expect((try? await journal.verifyAudit().isIntact) == true)
        }
        let spool = JournalSpool(directory: dir, name: "bench.jsonl")
        let records = (0..<n).map { i in JournalRecord.step(StepRecord(runID: run.id, stepKey: "sp\(i)", kind: "bench", status: "changed")) }
        try await Self.measure("spool appends (fsync each)", count: n) {
            for r in records { try spool.append(r) }
        }
        let c = try await journal.liveConnection()
        try await Self.measure("flush of \(n) spooled records", count: n) {
            _ = try await c.withSession { s in try spool.drain { try Journal.apply($0, in: s) } }
        }
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }
}
