import Foundation
import MigPlanJournal
import Testing

@Suite struct AuditChainTests {
    /// Five rows chained as the journal writes them.
    static func chain(_ n: Int = 5) -> [AuditRow] {
        var rows: [AuditRow] = []
        for i in 1...n {
            let event = AuditEvent(id: "rec-\(i)", runID: "run-1", at: Date(timeIntervalSince1970: 1_790_000_000 + Double(i)),
                                   actor: "alice", action: "step", subject: "face-\(i)", detail: "{\"n\":\(i)}")
            rows.append(AuditChain.makeRow(after: rows.last, event: event))
        }
        return rows
    }

    @Test func canonicalSerialisationMatchesAnIndependentImplementation() {
        // The same row hashed by Python's hashlib over the documented format (docs/journal.md).
        let hash = AuditChain.hash(id: 1, recordID: "rec-1", runID: nil, recordedAt: "2026-11-25T20:00:00.000000Z",
                                   actor: "alice", action: "checkpoint", subject: "face-1", detail: "{\"host\":\"instance1\"}",
                                   prevHash: AuditChain.genesis)
        #expect(hash == "f2ca4cd50c43435e81d0c1abc96e9ef14e4175b4237d3e888dc8dd5ba069fb0a")
    }

    @Test func canonicalSerialisationIsUnambiguousAcrossFieldBoundaries() {
        let a = AuditChain.hash(id: 1, recordID: "r", runID: nil, recordedAt: "t", actor: "ab", action: "c", subject: "s",
                                detail: "", prevHash: AuditChain.genesis)
        let b = AuditChain.hash(id: 1, recordID: "r", runID: nil, recordedAt: "t", actor: "a", action: "bc", subject: "s",
                                detail: "", prevHash: AuditChain.genesis)
        let c = AuditChain.hash(id: 1, recordID: "r", runID: "", recordedAt: "t", actor: "ab", action: "c", subject: "s",
                                detail: "", prevHash: AuditChain.genesis)
        #expect(a != b)
        #expect(a != c, "NULL and empty run id must hash differently")
    }

    @Test func rowsLinkToTheirPredecessor() {
        let rows = Self.chain()
        #expect(rows[0].prevHash == AuditChain.genesis)
        #expect(rows[0].id == 1)
        for i in 1..<rows.count {
            #expect(rows[i].prevHash == rows[i - 1].rowHash)
            #expect(rows[i].id == rows[i - 1].id + 1)
        }
    }

    @Test func intactChainVerifies() {
        let rows = Self.chain()
        let report = AuditChain.verify(rows.shuffled())
        #expect(report.isIntact)
        #expect(report.rowCount == 5)
        #expect(report.headID == 5)
        #expect(report.headHash == rows[4].rowHash)
        #expect(AuditChain.verify([]).isIntact)
    }

    @Test func editedRowIsNamed() {
        var rows = Self.chain()
        rows[2].detail = "{\"n\":999}"
        #expect(AuditChain.verify(rows).findings == [.edited(id: 3)])
    }

    @Test func editedRowWithRecomputedHashIsNamed() {
        var rows = Self.chain()
        rows[1].actor = "mallory"
        rows[1].rowHash = AuditChain.expectedHash(of: rows[1])
        #expect(AuditChain.verify(rows).findings == [.editedAndRehashed(id: 2, nextID: 3)])
    }

    @Test func deletedRowIsNamed() {
        var rows = Self.chain()
        rows.remove(at: 2)
        #expect(AuditChain.verify(rows).findings == [.deleted(ids: 3...3)])
        var first = Self.chain()
        first.removeFirst()
        #expect(AuditChain.verify(first).findings == [.deleted(ids: 1...1)])
        var two = Self.chain()
        two.removeSubrange(1...2)
        #expect(AuditChain.verify(two).findings == [.deleted(ids: 2...3)])
    }

    @Test func insertedRowIsNamed() {
        var rows = Self.chain()
        let forged = AuditRow(id: 42, recordID: "forged", runID: "run-1", recordedAt: "2026-11-25T20:00:00.000000Z", actor: "mallory",
                              action: "step", subject: "face-9", detail: "{}", prevHash: rows[4].rowHash, rowHash: String(repeating: "a", count: 64))
        rows.append(forged)
        #expect(AuditChain.verify(rows).findings == [.inserted(id: 42)])

        // A row slipped in between with a made-up id: the chain goes around it.
        var middle = Self.chain()
        var fake = forged
        fake.id = 0
        fake.prevHash = "junk"
        middle.insert(fake, at: 0)
        #expect(AuditChain.verify(middle).findings == [.inserted(id: 0)])
    }

    @Test func findingsDescribeTheRow() {
        #expect(AuditChain.Finding.edited(id: 7).description.contains("row 7"))
        #expect(AuditChain.Finding.deleted(ids: 3...3).description == "row 3 was deleted")
        #expect(AuditChain.Finding.inserted(id: 9).description.contains("row 9 was inserted"))
    }

    @Test func journalTimeIsUTCWithMicroseconds() {
        #expect(JournalTime.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000000Z")
        #expect(JournalTime.format(Date(timeIntervalSince1970: 1_790_000_000.25)) == "2026-09-21T14:13:20.250000Z")
    }
}

@Suite struct AuditAnchorTests {
    @Test func rowsCutOffTheEndAreFoundWithTheAnchor() {
        let rows = AuditChainTests.chain(6)
        let anchor = AuditChain.Anchor(id: 6, hash: rows[5].rowHash)
        #expect(AuditChain.verify(rows, anchor: anchor).isIntact)
        let cut = Array(rows.prefix(4))
        #expect(AuditChain.verify(cut).isIntact, "a chain alone cannot see its tail cut off")
        #expect(AuditChain.verify(cut, anchor: anchor).findings == [.deleted(ids: 5...6)])
    }

    @Test func chainRewrittenWithRecomputedHashesIsFoundWithTheAnchor() {
        let rows = AuditChainTests.chain(4)
        let anchor = AuditChain.Anchor(id: 4, hash: rows[3].rowHash)
        // Rewrite from row 2 on, recomputing every hash: internally consistent.
        var forged = [rows[0]]
        for i in 1..<4 {
            var r = rows[i]
            r.actor = "mallory"
            r.prevHash = forged.last!.rowHash
            r.rowHash = AuditChain.expectedHash(of: r)
            forged.append(r)
        }
        #expect(AuditChain.verify(forged).isIntact)
        #expect(AuditChain.verify(forged, anchor: anchor).findings == [.rewritten(id: 4)])
    }

    @Test func anchorIsSavedAndLoadedBesideTheSpool() throws {
        let dir = JournalSpoolTests.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir, for: JournalConfig(host: "10.77.0.1", port: 5433))
        #expect(try spool.loadAnchor() == nil)
        let anchor = AuditChain.Anchor(id: 42, hash: String(repeating: "e", count: 64), recordedAt: "2026-11-25T21:00:00.000000Z")
        try spool.saveAnchor(anchor)
        #expect(try spool.loadAnchor() == anchor)
        #expect(spool.anchorURL.lastPathComponent.hasPrefix("audit-anchor-"))
        #expect(spool.anchorURL.deletingLastPathComponent() == spool.fileURL.deletingLastPathComponent())
    }
}
