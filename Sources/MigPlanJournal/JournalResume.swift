import Foundation

extension Journal {
    /// Records that run `runID` resumes run `previous` (`apply --resume`), once the resuming run
    /// holds the container locks (so `previous`'s process is gone):
    /// - `previous`, if it never wrote its end (its controller was killed), ends `interrupted` with
    ///   the detail "resumed by run RUN", and its steps still `running` become `interrupted`;
    /// - an audit row `run.resume` (run `runID`, subject `previous`) says which run this one resumes,
    ///   and `run.interrupted` (run `previous`) when `previous` is marked interrupted.
    /// Idempotent: a run that already has an end keeps it.
    public func recordResumption(of previous: String, by runID: String) async throws {
        let connection = try await liveConnection()
        let detail = "resumed by run \(runID)"
        let marked = try await connection.withSession { s -> Bool in
            try s.transaction { s -> Bool in
                let ended = try s.execute("""
                    UPDATE runs SET ended_at = now(), outcome = 'interrupted', detail = $2, end_record_id = $3
                    WHERE id = $1 AND end_record_id IS NULL RETURNING id
                    """, [previous, detail, newJournalID()])
                try s.execute("""
                    UPDATE steps SET status = 'interrupted', ended_at = coalesce(ended_at, now()),
                        detail = coalesce(detail, $2)
                    WHERE run_id = $1 AND status = 'running'
                    """, [previous, "the controller stopped before this step ended; resumed by run \(runID)"])
                return ended.count > 0
            }
        }
        if marked {
            try await appendAudit(AuditEvent(runID: previous, action: "run.interrupted", subject: previous, detail: detail))
        }
        try await appendAudit(AuditEvent(runID: runID, action: "run.resume", subject: previous,
                                         detail: "resumes run \(previous)" + (marked ? " (it had no end: now interrupted)" : "")))
    }
}

extension JournalReader {
    /// Which run `runID` resumes, and which runs resumed it (from the `run.resume` audit rows).
    public func resumption(of runID: String) async throws -> (resumes: String?, resumedBy: [String]) {
        let resumes = try await connection.execute(
            "SELECT subject FROM audit WHERE run_id = $1 AND action = 'run.resume' ORDER BY id LIMIT 1", [runID])
        let by = try await connection.execute(
            "SELECT run_id FROM audit WHERE subject = $1 AND action = 'run.resume' ORDER BY id", [runID])
        return (resumes.rows.first?[0] ?? nil, by.rows.compactMap { $0[0] })
    }
}
