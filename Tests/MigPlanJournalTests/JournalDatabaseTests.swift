import Foundation
@testable import MigPlanJournal
import Testing

/// Against the lab's PostgreSQL (scripts/lab up). Each test works in a schema of its own.
@Suite(.serialized, .enabled(if: !LabDatabase.skip, "MIGPLAN_SKIP_LAB=1"), .timeLimit(.minutes(2)))
struct JournalDatabaseTests {
    @Test func connectsOverTLSWithFullCertificateVerification() async throws {
        let c = try await LabDatabase.connect()
        let tls = await c.tlsInfo()
        #expect(tls.inUse)
        #expect(tls.protocolVersion?.hasPrefix("TLSv1.") == true)
        let rows = try await c.execute("SELECT ssl::text AS ssl, version AS v FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        #expect(rows[0, "ssl"] == "true")
        await c.close()
        await c.close()  // twice is fine
    }

    @Test func serverCertificateFromAnotherCAIsRefused() async throws {
        var config = try LabDatabase.config()
        config.sslRootCert = "/etc/ssl/certs/ca-certificates.crt"
        do {
            _ = try await JournalConnection.connect(config, password: try LabDatabase.password())
            Issue.record("a server certificate not signed by the given CA must be refused")
        } catch let e as JournalError {
            #expect(e.code == .connection)
            #expect(e.message.contains("certificate verify failed"), "\(e)")
        }
    }

    @Test func connectionWithoutTLSIsRefusedByTheServer() async throws {
        var config = try LabDatabase.config()
        config.sslMode = .disable
        config.minimumSSLMode = .disable  // let the request reach the server: the server must refuse it
        let password = try LabDatabase.password()
        do {
            _ = try await JournalConnection.connect(config, password: password)
            Issue.record("the lab server must refuse a connection without SSL")
        } catch let e as JournalError {
            #expect(e.code == .connection)
            #expect(e.message.contains("no pg_hba.conf entry"), "\(e)")
            #expect(e.message.contains("no encryption"), "\(e)")
            #expect(!e.description.contains(password))
        }
    }

    @Test func wrongPasswordFailsWithoutEchoingIt() async throws {
        let config = try LabDatabase.config()
        let wrong = "not-the-password-\(newJournalID())"
        do {
            _ = try await JournalConnection.connect(config, password: wrong)
            Issue.record("a wrong password must be refused")
        } catch let e as JournalError {
            #expect(e.message.contains("password authentication failed"), "\(e)")
            #expect(!e.description.contains(wrong))
        }
    }

    @Test func connectionFromAnAddressNotInPgHbaIsRefused() async throws {
        _ = try LabDatabase.config()
        let namespace = try TestNamespace.unlisted()
        defer { namespace.remove() }
        let password = try LabDatabase.password()
        let conninfo = "host=\(LabDatabase.host) port=\(LabDatabase.port) dbname=migplan user=migplan sslmode=verify-full sslrootcert=\(LabDatabase.caPath) connect_timeout=5"
        let r = try LabDatabase.run("/usr/bin/nsenter", ["--net=/run/netns/\(namespace.name)", "psql", "-X", "-At", conninfo, "-c", "select 1"],
                                    environment: ["PGPASSWORD": password])
        #expect(r.status != 0)
        #expect(r.stderr.contains("no pg_hba.conf entry for host \"\(namespace.address)\""), "\(r.stderr)")
    }

    @Test func initCreatesTheSchemaOnceAndIsIdempotent() async throws {
        let schema = "jt_" + newJournalID().replacingOccurrences(of: "-", with: "").prefix(12)
        defer { Task { await LabDatabase.dropSchema(schema) } }
        let c = try await LabDatabase.connect(schema: schema)
        #expect(try await JournalSchema.currentVersion(c) == 0)
        let first = try await JournalSchema.migrate(c)
        #expect(first == JournalSchema.migrations.map(\.version))
        let second = try await JournalSchema.migrate(c)
        #expect(second.isEmpty)
        #expect(try await JournalSchema.currentVersion(c) == JournalSchema.latestVersion)
        let tables = try await c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1", [schema])
        #expect(tables.rows.compactMap { $0[0] } == ["attempts", "audit", "locks", "metrics", "runs", "schema_migrations", "steps"])
        await c.close()
        await LabDatabase.dropSchema(schema)
    }

    @Test func openRefusesAnUninitialisedJournal() async throws {
        let schema = "jt_" + newJournalID().replacingOccurrences(of: "-", with: "").prefix(12)
        let config = try LabDatabase.config(schema: schema)
        do {
            _ = try await Journal.open(config: config, password: try LabDatabase.password(), spool: JournalSpool(directory: JournalSpoolTests.tempDir()))
            Issue.record("open must refuse a database without migplan's schema")
        } catch let e as JournalError {
            #expect(e.code == .migration)
            #expect(e.message.contains("migplan journal init"))
        }
    }

    @Test func recordsAreWrittenOnceAndReadBack() async throws {
        let schema = try await LabDatabase.freshSchema()
        let dir = JournalSpoolTests.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(),
                                             spool: JournalSpool(directory: dir))
        let records = JournalSpoolTests.sampleRecords(run: newJournalID())
        for r in records { try await journal.write(r) }
        // Replaying everything (a flush after a crash) changes nothing.
        for r in records { try await journal.write(r) }
        let c = try await journal.liveConnection()
        for table in ["runs", "steps", "attempts", "metrics", "audit"] {
            #expect(try await c.execute("SELECT count(*) AS n FROM \(table)")[0, "n"] == "1", "\(table)")
        }
        guard case .runStarted(let run) = records[0] else { return }
        let reader = JournalReader(connection: c)
        let detail = try await reader.run(String(run.id.prefix(8)))
        #expect(detail.run.id == run.id)
        #expect(detail.run.outcome == "succeeded")
        #expect(detail.run.durationSeconds == 2)
        #expect(detail.steps.count == 1)
        #expect(detail.steps.first?.attempts.first?.stderrTail == "ünïcode ✓")
        #expect(detail.metrics.first?.transferSizeBytes == 104_857_600)
        #expect(detail.metrics.first?.downtime == 0.8)
        let runs = try await reader.runs(planName: "face", limit: 5)
        #expect(runs.map(\.id) == [run.id])
        #expect(try await reader.runs(planName: "other").isEmpty)
        await #expect(throws: JournalError.self) { try await reader.run("does-not-exist") }
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }

    @Test func recordTheServerRefusesIsSetAsideWithoutBlockingTheSpool() async throws {
        let schema = try await LabDatabase.freshSchema()
        let dir = JournalSpoolTests.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spool = JournalSpool(directory: dir)
        let run = newJournalID()
        var records = JournalSpoolTests.sampleRecords(run: run)
        // An attempt of a step that was never recorded: the foreign key refuses it, always.
        let poison = JournalRecord.attempt(AttemptRecord(runID: run, stepID: "no-such-step", number: 1, startedAt: Date(), durationSeconds: 0))
        records.insert(poison, at: 2)
        try spool.append(records)
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(),
                                             spool: spool, flushSpool: false)
        #expect(try await journal.flush() == records.count)
        #expect(spool.isEmpty)
        #expect(spool.rejectedCount == 1)
        let rejected = try String(contentsOf: spool.rejectedURL, encoding: .utf8)
        #expect(rejected.contains("no-such-step"))
        #expect(rejected.contains("23503"), "the reason carries the SQLSTATE (foreign_key_violation)")
        let c = try await journal.liveConnection()
        #expect(try await c.execute("SELECT count(*) AS n FROM attempts")[0, "n"] == "1")
        #expect(try await c.execute("SELECT outcome FROM runs")[0, "outcome"] == "succeeded")
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }

    @Test func auditTableRefusesUpdateAndDeleteEvenFromItsOwner() async throws {
        let schema = try await LabDatabase.freshSchema()
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(),
                                             spool: JournalSpool(directory: JournalSpoolTests.tempDir()))
        try await journal.appendAudit(AuditEvent(runID: nil, action: "test", subject: "x"))
        let c = try await journal.liveConnection()
        for sql in ["UPDATE audit SET detail = 'changed'", "DELETE FROM audit", "TRUNCATE audit"] {
            do {
                try await c.execute(sql)
                Issue.record("\(sql) must be refused")
            } catch let e as JournalError {
                #expect(e.message.contains("append-only"), "\(e)")
                #expect(e.sqlstate == "42501")
            }
        }
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }

    @Test func verifyDetectsRowsEditedDeletedAndInsertedWithPsql() async throws {
        let schema = try await LabDatabase.freshSchema()
        let journal = try await Journal.open(config: try LabDatabase.config(schema: schema), password: try LabDatabase.password(),
                                             spool: JournalSpool(directory: JournalSpoolTests.tempDir()))
        for i in 1...6 {
            try await journal.appendAudit(AuditEvent(runID: "run-x", action: "step", subject: "face-\(i)", detail: "{\"i\":\(i)}"))
        }
        #expect(try await journal.verifyAudit().isIntact)
        #expect(try await journal.verifyAudit().rowCount == 6)
        #expect(try await journal.auditProtectionProblems().isEmpty)

        // A superuser with psql bypasses the triggers and edits, deletes and inserts rows.
        let r = try LabDatabase.superuserPSQL("""
            SET search_path = \(schema);
            SET session_replication_role = replica;
            UPDATE audit SET detail = '{"i":999}' WHERE id = 2;
            DELETE FROM audit WHERE id = 4;
            INSERT INTO audit SELECT 100, 'forged', run_id, recorded_at, 'mallory', action, subject, detail, row_hash, md5('x') || md5('y')
              FROM audit WHERE id = 6;
            """)
        #expect(r.status == 0, "\(r.stderr)")
        let report = try await journal.verifyAudit()
        #expect(report.findings == [.edited(id: 2), .deleted(ids: 4...4), .inserted(id: 100)])
        let text = report.findings.map(\.description).joined(separator: "\n")
        #expect(text.contains("row 2"))
        #expect(text.contains("row 4"))
        #expect(text.contains("row 100"))
        // Disabling the append-only trigger is reported too.
        let disable = try LabDatabase.superuserPSQL("SET search_path = \(schema); ALTER TABLE audit DISABLE TRIGGER audit_append_only;")
        #expect(disable.status == 0, "\(disable.stderr)")
        let problems = try await journal.auditProtectionProblems()
        #expect(problems.count == 1)
        #expect(problems.first?.contains("audit_append_only") == true)
        await journal.close()
        await LabDatabase.dropSchema(schema)
    }

    @Test func secondLockHolderWaitsThenFailsNamingTheFirst() async throws {
        let schema = try await LabDatabase.freshSchema()
        let config = try LabDatabase.config(schema: schema)
        let password = try LabDatabase.password()
        let a = try await Journal.open(config: config, password: password, spool: JournalSpool(directory: JournalSpoolTests.tempDir()))
        let b = try await Journal.open(config: config, password: password, spool: JournalSpool(directory: JournalSpoolTests.tempDir()))
        let runA = "run-a-" + newJournalID(), runB = "run-b-" + newJournalID()
        let (held, holding) = AsyncStream<Void>.makeStream()
        let (release, releasing) = AsyncStream<Void>.makeStream()
        let first = Task {
            defer { holding.finish() }  // never leave the test waiting if taking the locks fails
            try await a.withContainerLocks(["face-2", "face-1"], runID: runA, timeout: .seconds(5)) {
                holding.yield()
                for await _ in release { break }
            }
        }
        defer { releasing.finish() }
        for await _ in held { break }

        let start = ContinuousClock.now
        do {
            try await b.withContainerLocks(["face-1"], runID: runB, timeout: .seconds(1)) {
                Issue.record("the second holder must not get the lock")
            }
        } catch let e as JournalError {
            #expect(e.code == .lockTimeout)
            #expect(e.message.contains("face-1"))
            #expect(e.message.contains(runA), "\(e)")
        }
        let waited = ContinuousClock.now - start
        #expect(waited >= .seconds(1))
        #expect(waited < .seconds(4))
        #expect(try await b.lockHolder(of: "face-2")?.runID == runA)

        releasing.yield()
        try await first.value
        #expect(try await b.lockHolder(of: "face-1") == nil)
        // Free again: the second run gets it at once.
        let got = try await b.withContainerLocks(["face-1"], runID: runB, timeout: .seconds(1)) { true }
        #expect(got)
        await a.close()
        await b.close()
        await LabDatabase.dropSchema(schema)
    }
}

/// A network namespace whose address is not in the lab's pg_hba.conf: the lab's `instance3`
/// when it exists, else a temporary `mp-jtest` at 10.77.0.99 bridged into `mpbr0`.
struct TestNamespace {
    var name: String
    var address: String
    var temporary: Bool

    static func unlisted() throws -> TestNamespace {
        if FileManager.default.fileExists(atPath: "/run/netns/mp-instance3") {
            return TestNamespace(name: "mp-instance3", address: "10.77.0.13", temporary: false)
        }
        let ns = TestNamespace(name: "mp-jtest", address: "10.77.0.99", temporary: true)
        ns.remove()
        let steps: [[String]] = [
            ["netns", "add", ns.name],
            ["link", "add", "mpjt0", "type", "veth", "peer", "name", "mpjt1"],
            ["link", "set", "mpjt1", "netns", ns.name],
            ["link", "set", "mpjt0", "master", "mpbr0"],
            ["link", "set", "mpjt0", "up"],
            ["-n", ns.name, "addr", "add", "\(ns.address)/24", "dev", "mpjt1"],
            ["-n", ns.name, "link", "set", "mpjt1", "up"],
            ["-n", ns.name, "link", "set", "lo", "up"],
        ]
        for args in steps {
            let r = try LabDatabase.run("/usr/sbin/ip", args)
            if r.status != 0 {
                ns.remove()
                throw LabDatabase.Absent(description: "cannot make the test namespace (ip \(args.joined(separator: " ")): \(r.stderr)); is the lab up (`scripts/lab up`)?")
            }
        }
        return ns
    }

    func remove() {
        guard temporary else { return }
        _ = try? LabDatabase.run("/usr/sbin/ip", ["link", "del", "mpjt0"])
        _ = try? LabDatabase.run("/usr/sbin/ip", ["netns", "del", name])
    }
}
