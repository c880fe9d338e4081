import Foundation
@testable import MigPlanJournal
import Testing

/// Stops the lab's PostgreSQL in the middle of a run (scripts/lab pg stop) and starts it again:
/// every record must end up in the database exactly once. It disrupts the shared lab, so
/// `scripts/test` runs `*DisruptiveTests` suites in a second, serial phase after all the others.
@Suite(.serialized, .enabled(if: !LabDatabase.skip, "MIGPLAN_SKIP_LAB=1"), .timeLimit(.minutes(2)))
struct JournalDisruptiveTests {
    @Test func recordsSpooledWhileTheDatabaseIsDownAreWrittenOnceWhenItIsBack() async throws {
        let schema = try await LabDatabase.freshSchema()
        let dir = JournalSpoolTests.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(), spool: spool)
        await journal.setReconnectInterval(.zero)
        let run = RunRecord(planName: "outage", planSHA256: String(repeating: "c", count: 64))
        try await journal.beginRun(run)

        var expected: [String: Set<String>] = ["runs": [run.id], "steps": [], "attempts": [], "metrics": [], "audit": []]
        func phase(_ name: String, count: Int) async throws {
            for i in 0..<count {
                let step = StepRecord(runID: run.id, stepKey: "\(name)-\(i)", kind: "test", host: "instance1", status: "running")
                try await journal.recordStep(step)
                var done = step
                done.status = "changed"
                done.endedAt = Date()
                try await journal.recordStep(done)
                let attempt = AttemptRecord(runID: run.id, stepID: step.id, number: 1, host: "instance1", command: "true",
                                            exitStatus: 0, startedAt: Date(), durationSeconds: 0.01)
                try await journal.recordAttempt(attempt)
                let metric = MetricRecord(runID: run.id, container: "c-\(name)-\(i)", flow: "stateless", downtime: 0.1)
                try await journal.recordMetric(metric)
                let audit = AuditEvent(runID: run.id, action: "step", subject: step.stepKey)
                try await journal.appendAudit(audit)
                expected["steps"]!.insert(step.id)
                expected["attempts"]!.insert(attempt.id)
                expected["metrics"]!.insert(metric.id)
                expected["audit"]!.insert(audit.id)
            }
        }

        
        try await phase("before", count: 5)
        #expect(spool.isEmpty)

        let stop = try LabDatabase.pg("stop")
        #expect(stop.status == 0, "\(stop.stderr)")
        var restarted = false
        defer {
            if !restarted { _ = try? LabDatabase.pg("start") }
        }
        // The run goes on: nothing throws, records go to the spool.
        try await phase("during", count: 5)
        #expect(!spool.isEmpty)
        #expect(await journal.isSpooling)
        let spooled = try spool.read().records.count
        #expect(spooled == 5 * 5)

        let start = try LabDatabase.pg("start")
        restarted = start.status == 0
        try #require(restarted, "scripts/lab pg start: \(start.stdout)\(start.stderr)")
        try await LabDatabase.waitUntilReachable()

        // The next record notices the database is back, drains the spool first, then writes.
        try await phase("after", count: 3)
        let end = RunEnd(runID: run.id, outcome: "succeeded")
        try await journal.endRun(end)
        #expect(spool.isEmpty)
        #expect(await journal.isSpooling == false)

        // A flush replayed (e.g. the spool copied before a crash) writes nothing twice.
        let c = try await journal.liveConnection()
        try spool.append(JournalSpoolTests.sampleRecords(run: run.id).filter { if case .runStarted = $0 { false } else { true } })
        _ = try await journal.flush()
        expected["steps"]!.insert("s1")
        expected["attempts"]!.insert("a1")
        expected["metrics"]!.insert("m1")
        expected["audit"]!.insert("e1")
        try spool.append(JournalSpoolTests.sampleRecords(run: run.id).filter { if case .runStarted = $0 { false } else { true } })
        _ = try await journal.flush()

        for (table, ids) in expected {
            let idColumn = table == "audit" ? "record_id" : "id"
            let rows = try await c.execute("SELECT \(idColumn) AS id, count(*) OVER (PARTITION BY \(idColumn)) AS n FROM \(table)")
            let found = rows.rows.compactMap { $0[0] }
            #expect(Set(found) == ids, "\(table): missing \(ids.subtracting(found)), extra \(Set(found).subtracting(ids))")
            #expect(found.count == ids.count, "\(table): duplicates")
        }
        let outcome = try await c.execute("SELECT outcome FROM runs WHERE id = $1", [run.id])
        #expect(outcome[0, "outcome"] == "succeeded")
        let steps = try await c.execute("SELECT count(*) AS n FROM steps WHERE status = 'changed' AND ended_at IS NOT NULL AND step_key <> 'face-1.checkpoint'")
        #expect(steps[0, "n"] == String(13))
        #expect(try await journal.verifyAudit().isIntact)
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }
}
