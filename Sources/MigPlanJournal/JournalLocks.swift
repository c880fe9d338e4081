import Foundation

extension Journal {
    /// Who holds a container lock, as recorded in the `locks` table.
    public struct LockHolder: Sendable, Equatable, CustomStringConvertible {
        public var container: String
        public var runID: String
        public var holder: String
        public var acquiredAt: String
        public var description: String { "run \(runID) (\(holder), since \(acquiredAt))" }
    }

    /// "operator@host pid N": who this process is, for the `locks` table.
    public static func lockHolderName() -> String {
        "\(RunRecord.currentOperator())@\(ProcessInfo.processInfo.hostName) pid \(getpid())"
    }

    /// Takes a PostgreSQL session advisory lock per container (`pg_try_advisory_lock` on
    /// `hashtext(name)`, polled until `timeout`), records the holder in `locks`, runs `body`, and
    /// releases them. Names are locked in sorted order so two runs never deadlock. When a lock
    /// stays taken past the timeout, throws `.lockTimeout` naming the run that holds it.
    ///
    /// The locks live as long as this journal's database session: if the database connection
    /// is lost, the server releases them.
    ///
    /// `refuseIfHeldBy` (`apply --resume RUN`): a lock held by that run means its controller
    /// process still runs it; throws `.lockTimeout` at once, without waiting.
    @discardableResult
    public func withContainerLocks<T: Sendable>(
        _ names: [String], runID: String, timeout: Duration, pollInterval: Duration = .milliseconds(200),
        refuseIfHeldBy liveRun: String? = nil, _ body: @Sendable () async throws -> T
    ) async throws -> T {
        let connection = try await liveConnection()
        let sorted = Array(Set(names)).sorted()
        var held: [String] = []
        let holder = Self.lockHolderName()
        let deadline = ContinuousClock.now + timeout
        do {
            for name in sorted {
                while true {
                    let got = try await connection.withSession { s -> Bool in
                        let r = try s.execute("SELECT pg_try_advisory_lock(\(JournalSchema.containerLockClass), hashtext($1)) AS ok", [name])
                        guard r[0, "ok"] == "t" else { return false }
                        try s.execute("""
                            INSERT INTO locks (container, run_id, holder, acquired_at) VALUES ($1, $2, $3, now())
                            ON CONFLICT (container) DO UPDATE SET run_id = EXCLUDED.run_id, holder = EXCLUDED.holder, acquired_at = now()
                            """, [name, runID, holder])
                        return true
                    }
                    if got {
                        held.append(name)
                        break
                    }
                    if let liveRun, let who = try await lockHolder(of: name), who.runID == liveRun {
                        throw JournalError(.lockTimeout,
                            "run \(liveRun) is still running: it holds the lock on container \(name) (\(who.holder), since \(who.acquiredAt)); "
                                + "a live run cannot be resumed", context: "run \(runID)")
                    }
                    if ContinuousClock.now >= deadline {
                        let who = try await lockHolder(of: name)
                        throw JournalError(.lockTimeout,
                            "container \(name) is locked by \(who.map(\.description) ?? "another session (holder unknown)"); gave up after \(timeout)",
                            context: "run \(runID)")
                    }
                    try await Task.sleep(for: min(pollInterval, max(.milliseconds(1), deadline - ContinuousClock.now)))
                }
            }
        } catch {
            await release(held, runID: runID, on: connection)
            throw error
        }
        do {
            let value = try await body()
            await release(held, runID: runID, on: connection)
            return value
        } catch {
            await release(held, runID: runID, on: connection)
            throw error
        }
    }

    /// The recorded holder of a container's lock, if any.
    public func lockHolder(of container: String) async throws -> LockHolder? {
        let connection = try await liveConnection()
        let r = try await connection.execute(
            "SELECT container, run_id, holder, to_char(acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at FROM locks WHERE container = $1",
            [container])
        guard r.count > 0 else { return nil }
        return LockHolder(container: r[0, "container"] ?? container, runID: r[0, "run_id"] ?? "?", holder: r[0, "holder"] ?? "?",
                          acquiredAt: r[0, "at"] ?? "?")
    }

    private func release(_ names: [String], runID: String, on connection: JournalConnection) async {
        guard !names.isEmpty else { return }
        _ = try? await connection.withSession { s in
            for name in names.reversed() {
                _ = try? s.execute("DELETE FROM locks WHERE container = $1 AND run_id = $2", [name, runID])
                _ = try? s.execute("SELECT pg_advisory_unlock(\(JournalSchema.containerLockClass), hashtext($1))", [name])
            }
        }
    }
}
