import Foundation
import MigPlanJournal
import Testing

@Suite struct JournalSpoolTests {
    /// A fresh path under the temporary directory, not yet created (a spool makes its directory
    /// on first append, so a test whose journal never spools leaves nothing behind).
    static func tempDir() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("migplan-spool-\(UUID().uuidString)")
    }

    static func sampleRecords(run: String = "run-1") -> [JournalRecord] {
        let start = Date(timeIntervalSince1970: 1_790_000_000.123456)
        return [
            .runStarted(RunRecord(id: run, planName: "face", planSHA256: String(repeating: "b", count: 64), operator: "alice", startedAt: start)),
            .step(StepRecord(id: "s1", runID: run, stepKey: "face-1.checkpoint", kind: "checkpoint", host: "instance1", status: "running", startedAt: start)),
            .attempt(AttemptRecord(id: "a1", runID: run, stepID: "s1", number: 1, host: "instance1", command: "runc checkpoint face-1",
                                   exitStatus: 0, stdoutTail: "", stderrTail: "ünïcode ✓", startedAt: start, durationSeconds: 0.25)),
            .metric(MetricRecord(id: "m1", runID: run, container: "face-1", flow: "stateful", downtime: 0.8, transferSizeBytes: 104_857_600, recordedAt: start)),
            .audit(AuditEvent(id: "e1", runID: run, at: start, actor: "alice", action: "checkpoint", subject: "face-1")),
            .runEnded(RunEnd(id: "end1", runID: run, outcome: "succeeded", endedAt: start.addingTimeInterval(2))),
        ]
    }

    @Test func appendedRecordsReadBackInOrderAndEqual() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        #expect(spool.isEmpty)
        let records = Self.sampleRecords()
        for r in records { try spool.append(r) }
        let read = try spool.read()
        #expect(read.records == records)
        #expect(read.skippedLines == 0)
        #expect(!spool.isEmpty)
    }

    @Test func spoolFileIsPrivateJSONLines() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        try spool.append(Self.sampleRecords())
        let attrs = try FileManager.default.attributesOfItem(atPath: spool.fileURL.path)
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let text = try String(contentsOf: spool.fileURL, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 6)
        #expect(text.hasSuffix("\n"))
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["kind"] is String)
            #expect(object?["record"] is [String: Any])
        }
    }

    @Test func partialLastLineFromACrashIsSkippedAndNextAppendStartsFresh() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        let records = Self.sampleRecords()
        try spool.append(Array(records.prefix(2)))
        // A crash in the middle of a write leaves half a line.
        let handle = try FileHandle(forWritingTo: spool.fileURL)
        handle.seekToEndOfFile()
        handle.write(Data(#"{"kind":"step","record":{"id":"s9","#.utf8))
        try handle.close()
        try spool.append(records[2])
        let read = try spool.read()
        #expect(read.records == Array(records.prefix(3)))
        #expect(read.skippedLines == 1)
    }

    @Test func drainHandsOverEverythingThenEmpties() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        try spool.append(Self.sampleRecords())
        var seen: [JournalRecord] = []
        let n = try spool.drain { seen += $0 }
        #expect(n == 6)
        #expect(seen == Self.sampleRecords())
        #expect(spool.isEmpty)
        #expect(try spool.read().records.isEmpty)
        #expect(try spool.drain { _ in Issue.record("nothing to drain") } == 0)
    }

    @Test func failedDrainKeepsTheSpool() throws {
        struct Down: Error {}
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        try spool.append(Self.sampleRecords())
        #expect(throws: Down.self) { try spool.drain { _ in throw Down() } }
        #expect(try spool.read().records == Self.sampleRecords())
    }

    @Test func missingSpoolReadsEmpty() throws {
        let spool = JournalSpool(directory: Self.tempDir().appendingPathComponent("never/made"))
        #expect(try spool.read().records.isEmpty)
        #expect(spool.isEmpty)
    }

    @Test func defaultDirectoryFollowsXDGStateHome() {
        #expect(JournalSpool.defaultDirectory(environment: ["XDG_STATE_HOME": "/s", "HOME": "/h"]).path == "/s/migplan/spool")
        #expect(JournalSpool.defaultDirectory(environment: ["HOME": "/h"]).path == "/h/.local/state/migplan/spool")
    }

    @Test func recordIDsAreUniqueUUIDs() {
        let ids = (0..<1000).map { _ in newJournalID() }
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.count == 36 && $0.split(separator: "-").count == 5 })
    }
}

@Suite struct InMemoryJournalTests {
    @Test func keepsRecordsOnceAndStepsAtTheirLatestState() async throws {
        let journal = InMemoryJournal()
        let records = JournalSpoolTests.sampleRecords()
        for r in records + records {
            switch r {
            case .runStarted(let x): try await journal.beginRun(x)
            case .runEnded(let x): try await journal.endRun(x)
            case .step(let x): try await journal.recordStep(x)
            case .attempt(let x): try await journal.recordAttempt(x)
            case .metric(let x): try await journal.recordMetric(x)
            case .audit(let x): try await journal.appendAudit(x)
            }
        }
        #expect(await journal.records == records)
        guard case .step(var step) = records[1] else { return }
        step.status = "changed"
        try await journal.recordStep(step)
        #expect(await journal.steps.map(\.status) == ["changed"])
        #expect(await journal.records.count == records.count)
    }
}
