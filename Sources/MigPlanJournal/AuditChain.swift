import Foundation
import MigPlanBasics

/// One row of the `audit` table as stored.
public struct AuditRow: Sendable, Equatable, Codable {
    public var id: Int64
    public var recordID: String
    public var runID: String?
    /// `JournalTime.format` text; kept as text so the hashed bytes are exactly what is stored.
    public var recordedAt: String
    public var actor: String
    public var action: String
    public var subject: String
    public var detail: String
    public var prevHash: String
    public var rowHash: String

    public init(id: Int64, recordID: String, runID: String?, recordedAt: String, actor: String, action: String,
                subject: String, detail: String, prevHash: String, rowHash: String) {
        self.id = id
        self.recordID = recordID
        self.runID = runID
        self.recordedAt = recordedAt
        self.actor = actor
        self.action = action
        self.subject = subject
        self.detail = detail
        self.prevHash = prevHash
        self.rowHash = rowHash
    }
}

/// The audit hash chain: each row stores the previous row's hash and the SHA-256 of its own
/// canonical serialisation, which includes that previous hash and the row's id. Editing,
/// deleting or inserting a row breaks the chain at that row.
public enum AuditChain {
    /// The `prev_hash` of the first row.
    public static let genesis = String(repeating: "0", count: 64)

    /// Canonical bytes of a row (everything but `row_hash`): a version line, then one line per
    /// field in a fixed order, `name=` followed by the value's UTF-8 length, `:`, and the value
    /// (`name=~` for NULL). Length prefixes make it unambiguous whatever the values contain.
    public static func canonicalBytes(id: Int64, recordID: String, runID: String?, recordedAt: String, actor: String,
                                      action: String, subject: String, detail: String, prevHash: String) -> [UInt8] {
        var out = "migplan-audit-v1\n"
        func field(_ name: String, _ value: String?) {
            if let value {
                out += "\(name)=\(value.utf8.count):\(value)\n"
            } else {
                out += "\(name)=~\n"
            }
        }
        field("id", String(id))
        field("record_id", recordID)
        field("run_id", runID)
        field("recorded_at", recordedAt)
        field("actor", actor)
        field("action", action)
        field("subject", subject)
        field("detail", detail)
        field("prev_hash", prevHash)
        return Array(out.utf8)
    }

    public static func hash(id: Int64, recordID: String, runID: String?, recordedAt: String, actor: String,
                            action: String, subject: String, detail: String, prevHash: String) -> String {
        SHA256Hasher.hash(canonicalBytes(id: id, recordID: recordID, runID: runID, recordedAt: recordedAt, actor: actor,
                                         action: action, subject: subject, detail: detail, prevHash: prevHash)).hex
    }

    /// The hash a row should carry given its content.
    public static func expectedHash(of row: AuditRow) -> String {
        hash(id: row.id, recordID: row.recordID, runID: row.runID, recordedAt: row.recordedAt, actor: row.actor,
             action: row.action, subject: row.subject, detail: row.detail, prevHash: row.prevHash)
    }

    /// The row that follows `previous` (nil: the first row) for `event`.
    public static func makeRow(after previous: AuditRow?, event: AuditEvent) -> AuditRow {
        let id = (previous?.id ?? 0) + 1
        let prev = previous?.rowHash ?? genesis
        var row = AuditRow(id: id, recordID: event.id, runID: event.runID, recordedAt: JournalTime.format(event.at),
                           actor: event.actor, action: event.action, subject: event.subject, detail: event.detail,
                           prevHash: prev, rowHash: "")
        row.rowHash = expectedHash(of: row)
        return row
    }

    /// What `verify` found wrong, naming rows by id.
    public enum Finding: Sendable, Equatable, CustomStringConvertible {
        /// The row's content no longer matches its hash (changed after it was written).
        case edited(id: Int64)
        /// The row's own hash is consistent but the next row no longer links to it: it was
        /// changed and its hash recomputed.
        case editedAndRehashed(id: Int64, nextID: Int64)
        /// Rows with these ids are missing.
        case deleted(ids: ClosedRange<Int64>)
        /// The row was not written by the chain: it neither links to its predecessor nor hashes
        /// correctly, and the chain continues without it.
        case inserted(id: Int64)
        /// The row does not link to its predecessor and nothing more specific explains why.
        case brokenLink(id: Int64)
        /// The row's hash differs from the one an earlier `verify` recorded for it (the anchor):
        /// the chain was rewritten from this row on, hashes recomputed.
        case rewritten(id: Int64)

        public var description: String {
            switch self {
            case .edited(let id): return "row \(id) was edited: its content does not match its hash"
            case .editedAndRehashed(let id, let next):
                return "row \(id) was edited and its hash recomputed: row \(next) no longer links to it"
            case .deleted(let ids):
                return ids.lowerBound == ids.upperBound ? "row \(ids.lowerBound) was deleted" : "rows \(ids.lowerBound)-\(ids.upperBound) were deleted"
            case .inserted(let id): return "row \(id) was inserted: it is not part of the chain"
            case .brokenLink(let id): return "row \(id) does not link to the row before it"
            case .rewritten(let id):
                return "row \(id) differs from the head recorded by an earlier verify: the chain was rewritten from there"
            }
        }

        public var rowID: Int64 {
            switch self {
            case .edited(let id), .inserted(let id), .brokenLink(let id), .rewritten(let id): return id
            case .editedAndRehashed(let id, _): return id
            case .deleted(let ids): return ids.lowerBound
            }
        }
    }

    public struct Report: Sendable, Equatable {
        public var rowCount: Int
        public var findings: [Finding]
        /// The last row's id and hash (record it elsewhere to detect a truncated tail later).
        public var headID: Int64?
        public var headHash: String?
        public var isIntact: Bool { findings.isEmpty }
    }

    /// A head seen by an earlier verification (kept by the controller outside the database):
    /// that row must still exist with that hash. Catches rows cut off the end of the chain and a
    /// chain rewritten with recomputed hashes, which the chain alone cannot reveal.
    public struct Anchor: Codable, Sendable, Equatable {
        public var id: Int64
        public var hash: String
        public var recordedAt: String
        public init(id: Int64, hash: String, recordedAt: String = JournalTime.format(Date())) {
            self.id = id
            self.hash = hash
            self.recordedAt = recordedAt
        }
    }

    /// Checks a chain given in any order, and against `anchor` when given. Pure: the database is
    /// read by `Journal.verifyAudit`.
    public static func verify(_ rowsInAnyOrder: [AuditRow], anchor: Anchor?) -> Report {
        var report = verify(rowsInAnyOrder)
        guard let anchor else { return report }
        if let row = rowsInAnyOrder.first(where: { $0.id == anchor.id }) {
            if row.rowHash != anchor.hash && !report.findings.contains(where: { $0.rowID == row.id }) {
                report.findings.append(.rewritten(id: row.id))
            }
        } else {
            let maxID = rowsInAnyOrder.map(\.id).max() ?? 0
            if anchor.id > maxID {
                report.findings.append(.deleted(ids: (maxID + 1)...anchor.id))
            } else if !report.findings.contains(where: { if case .deleted(let ids) = $0 { ids.contains(anchor.id) } else { false } }) {
                report.findings.append(.deleted(ids: anchor.id...anchor.id))
            }
        }
        return report
    }

    /// Checks a chain given in id order. Pure: the database is read by `Journal.verifyAudit`.
    public static func verify(_ rowsInAnyOrder: [AuditRow]) -> Report {
        let rows = rowsInAnyOrder.sorted { $0.id < $1.id }
        var findings: [Finding] = []
        let contentOK = rows.map { expectedHash(of: $0) == $0.rowHash }
        // The last row accepted as part of the chain.
        var anchor: AuditRow? = nil
        var i = 0
        while i < rows.count {
            let row = rows[i]
            let expectedPrev = anchor?.rowHash ?? genesis
            let expectedID = (anchor?.id ?? 0) + 1
            let linkOK = row.prevHash == expectedPrev
            if contentOK[i] && linkOK {
                if row.id != expectedID { findings.append(.brokenLink(id: row.id)) }
                anchor = row
                i += 1
                continue
            }
            if !contentOK[i] && linkOK {
                findings.append(row.id == expectedID ? .edited(id: row.id) : .inserted(id: row.id))
                anchor = row
                i += 1
                continue
            }
            // The link is broken. Is this row an intruder that the chain goes around?
            let next = i + 1 < rows.count ? rows[i + 1] : nil
            if !contentOK[i], next == nil || next!.prevHash == expectedPrev || row.id != expectedID {
                findings.append(.inserted(id: row.id))
                i += 1
                continue
            }
            if contentOK[i] && row.id > expectedID {
                // Rows between the anchor and this one are gone.
                findings.append(.deleted(ids: expectedID...(row.id - 1)))
                anchor = row
                i += 1
                continue
            }
            if contentOK[i], let a = anchor, row.id == expectedID {
                // This row is fine and in sequence, so its predecessor changed under it.
                if !findings.contains(where: { $0.rowID == a.id }) {
                    findings.append(.editedAndRehashed(id: a.id, nextID: row.id))
                }
                anchor = row
                i += 1
                continue
            }
            findings.append(contentOK[i] ? .brokenLink(id: row.id) : .edited(id: row.id))
            anchor = row
            i += 1
        }
        return Report(rowCount: rows.count, findings: findings, headID: rows.last?.id, headHash: rows.last?.rowHash)
    }
}
