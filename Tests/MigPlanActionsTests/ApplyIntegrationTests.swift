import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import Testing

extension ApplyLabSuites {
/// `apply` end to end on the lab: real sshd, CRIU, runc, Docker and PostgreSQL. Each test uses
/// its own container names (`ap-...`) and a throwaway journal schema.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct ApplyIntegrationTests {
    func options(schema: String, hooks: FaultHooks = FaultHooks()) throws -> ApplyOptions {
        var o = ApplyOptions()
        o.environment = try ApplyLab.applyEnvironment()
        o.journalSchema = schema
        o.hooks = hooks
        o.lockTimeout = .seconds(10)
        return o
    }

    static func memhogPlan(_ name: String, replicas: Int = 1, compression: String = "zlib\nlevel: 1",
                           archive: String = "single", onFailure: String = "rollback") throws -> String {
        try ApplyLab.writeRuncPlan(name, replicas: replicas,
                                   settings: ApplyLab.statefulSettings(compression: compression, archive: archive, onFailure: onFailure))
    }

    func installMemhog(_ name: String, mb: Int = 24) async throws {
        for host in ["instance1", "instance2"] {
            await ApplyLab.wipe(name, on: host)
            try await ApplyLab.installBundle("memhog", on: host, name: name,
                                             args: ["--mb", String(mb), "--mode", "half", "--fraction", "0.05", "--period", "0.5"])
        }
        try await ApplyLab.startRunc(name, on: "instance1")
    }

    // MARK: Stateful

    @Test func statefulRuncMemhogMovesWithItsStateThenReapplyChangesNothing() async throws {
        try ApplyLab.requireLab()
        let name = "ap-memhog"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: "instance1")
        let plan = try Self.memhogPlan(name)

        let result = try await ApplySession.apply(planFile: plan, options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(result.changed)
        #expect(result.exitStatus(detailed: true) == 3)
        #expect(try await ApplyLab.isRunning(name, on: "instance2"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1")))
        let after = try await ApplyLab.report(name, on: "instance2")
        #expect(after["boot"] as? String == before["boot"] as? String, "the same process continued")
        #expect((after["counter"] as? Int ?? -1) >= (before["counter"] as? Int ?? 0), "the counter continued")
        #expect(after["intact"] as? Bool == true, "memory digest unchanged")

        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == "succeeded")
        #expect(detail.steps.contains { $0.stepKey == "\(name).checkpoint@instance1" && $0.status == "changed" })
        #expect(detail.steps.contains { $0.stepKey == "\(name).transfer@controller" && !$0.attempts.isEmpty })
        let metric = try #require(detail.metrics.first { $0.container == name })
        #expect((metric.downtime ?? 0) > 0)
        #expect((metric.transferSizeBytes ?? 0) > 0)
        #expect(metric.checkpointDuration != nil && metric.resumeDuration != nil && metric.totalMigrationTime != nil)
        // Nothing left on either host once the destination is verified (images, archives, received files).
        let leftSource = try await ApplyLab.leftovers(of: name, on: "instance1")
        #expect(leftSource == "")
        let leftDestination = try await ApplyLab.leftovers(of: name, on: "instance2")
        #expect(leftDestination == "")

        // Re-apply: no changes, exit 0, the journal shows probes only.
        let again = try await ApplySession.apply(planFile: plan, options: try options(schema: schema))
        #expect(again.outcome == .succeeded, "\(again.summary)")
        #expect(!again.changed)
        #expect(again.exitStatus(detailed: true) == 0)
        let againDetail = try await ApplyLab.runDetail(again.runID, schema: schema)
        #expect(!againDetail.steps.isEmpty)
        #expect(againDetail.steps.allSatisfy { $0.status == "unchanged" })
        #expect(againDetail.metrics.isEmpty)
        let stillBoot = try await ApplyLab.report(name, on: "instance2")["boot"] as? String
        #expect(stillBoot == before["boot"] as? String)
        await ApplyLab.wipe(name, on: "instance2")
    }

    @Test func multiUserReplicasMoveInOneArchive() async throws {
        try ApplyLab.requireLab()
        let name = "ap-multi"
        let instances = ["\(name)-1", "\(name)-2"]
        for i in instances { try await installMemhog(i, mb: 16) }
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        var boots: [String: String] = [:]
        for i in instances { boots[i] = try await ApplyLab.report(i, on: "instance1")["boot"] as? String }
        let plan = try Self.memhogPlan(name, replicas: 2)
        let result = try await ApplySession.apply(planFile: plan, options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        for i in instances {
            #expect(try await ApplyLab.isRunning(i, on: "instance2"))
            #expect(!(try await ApplyLab.isRunning(i, on: "instance1")))
            #expect(try await ApplyLab.report(i, on: "instance2")["boot"] as? String == boots[i])
        }
        let containers = Set(result.metrics.map(\.container))
        #expect(containers.isSuperset(of: Set(instances + ["*"])))
        // One SSH connection per user session on each host, opened before the freeze, so that the
        // two restores do not queue behind each other on one connection.
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let opened = try #require(detail.steps.first { $0.stepKey.hasSuffix(".sessions@controller") })
        #expect(opened.detail?.contains(#""instance2.sessions":"2""#) == true, "\(opened.detail ?? "")")
        #expect(opened.detail?.contains(#""instance1.sessions":"2""#) == true, "\(opened.detail ?? "")")
        for i in instances { await ApplyLab.wipe(i, on: "instance2") }
    }

    @Test func statefulDockerMemhogMoves() async throws {
        try ApplyLab.requireLab()
        let image = "migplan/memhog:latest"
        guard await ApplyLab.hasDockerImage(image, on: "instance1"), await ApplyLab.hasDockerImage(image, on: "instance2") else {
            Issue.record("\(image) is not installed on instance1 and instance2: run `workloads/build all instance1 instance2`")
            return
        }
        let name = "ap-dmemhog"
        for h in ["instance1", "instance2"] { await ApplyLab.wipe(name, on: h, docker: true) }
        try await ApplyLab.startDocker(name, image: image, on: "instance1")
        let boot = try await ApplyLab.report(name, on: "instance1")["boot"] as? String
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let plan = try ApplyLab.writePlan(
            name: name,
            containers: """
              \(name):
                runtime: docker
                image: \(image)
                stateful: true
            """,
            migration: """
              - name: \(name)
                containers: [\(name)]
                from: instance1
                to: instance2
                flow: stateful
                transfer:
                  compression: none
                  archive: per-container
                  path: relay
            """)
        let result = try await ApplySession.apply(planFile: plan, options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(try await ApplyLab.isRunning(name, on: "instance2", docker: true))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1", docker: true)))
        let after = try await ApplyLab.report(name, on: "instance2")
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        for h in ["instance1", "instance2"] { await ApplyLab.wipe(name, on: h, docker: true) }
    }

    // MARK: Stateless

    func clockPlan(_ name: String, order: String) throws -> String {
        try ApplyLab.writeRuncPlan(name, stateful: false, settings: "flow: stateless\norder: \(order)")
    }

    @Test(arguments: ["stop-first", "start-first"])
    func statelessClockMoves(order: String) async throws {
        try ApplyLab.requireLab()
        let name = "ap-clock-\(order == "stop-first" ? "sf" : "st")"
        for host in ["instance1", "instance2"] {
            await ApplyLab.wipe(name, on: host)
            try await ApplyLab.installBundle("clock", on: host, name: name, args: ["--period", "0.5"])
        }
        try await ApplyLab.startRunc(name, on: "instance1")
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let result = try await ApplySession.apply(planFile: try clockPlan(name, order: order), options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(try await ApplyLab.isRunning(name, on: "instance2"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1")))
        let metric = try #require(result.metrics.first { $0.container == name })
        #expect(metric.flow == "stateless")
        #expect(metric.killDuration != nil && metric.startDuration != nil && metric.totalMigrationTime != nil)
        if order == "start-first" { #expect(metric.downtime == 0) } else { #expect((metric.downtime ?? 0) > 0) }
        await ApplyLab.wipe(name, on: "instance2")
    }

    @Test func containerOnBothHostsIsRefusedAndNothingIsTouched() async throws {
        try ApplyLab.requireLab()
        let name = "ap-clock-both"
        for host in ["instance1", "instance2"] {
            await ApplyLab.wipe(name, on: host)
            try await ApplyLab.installBundle("clock", on: host, name: name, args: ["--period", "0.5"])
            try await ApplyLab.startRunc(name, on: host)
        }
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let result = try await ApplySession.apply(planFile: try clockPlan(name, order: "stop-first"), options: try options(schema: schema))
        #expect(result.outcome == .refused)
        #expect(result.problems.joined().contains("runs on both"))
        #expect(result.exitStatus(detailed: false) == 1)
        #expect(try await ApplyLab.isRunning(name, on: "instance1"))
        #expect(try await ApplyLab.isRunning(name, on: "instance2"))
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.steps.isEmpty)
        #expect(detail.run.outcome == "refused")
        for host in ["instance1", "instance2"] { await ApplyLab.wipe(name, on: host) }
    }

    // MARK: Faults: each ends with the container running with its state on exactly one host

    /// Runs a stateful move of a fresh memhog with `hooks`, expects it to fail and roll back, and
    /// checks the container runs on the source only, the same process, memory intact.
    func expectRollback(_ name: String, hooks: (String) -> FaultHooks, failing expected: String,
                        outcome: ApplyResult.Outcome = .failed, stop: StopSignal = StopSignal(),
                        archive: String = "single") async throws -> ApplyResult {
        try ApplyLab.requireLab()
        try await installMemhog(name)
        let boot = try await ApplyLab.report(name, on: "instance1")["boot"] as? String
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let plan = try Self.memhogPlan(name, archive: archive)
        var o = try options(schema: schema, hooks: hooks(name))
        o.stop = stop
        let result = try await ApplySession.apply(planFile: plan, options: o)
        #expect(result.outcome == outcome, "\(result.summary)")
        #expect(result.journalWriteFailures.isEmpty, "\(result.journalWriteFailures)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        if !expected.isEmpty {
            #expect(result.problems.joined(separator: "\n").contains(expected), "\(result.problems)")
        }
        #expect(try await ApplyLab.isRunning(name, on: "instance1"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance2")))
        let after = try await ApplyLab.report(name, on: "instance1")
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == (outcome == .stopped ? "stopped" : "rolled-back"))
        #expect(detail.steps.contains { $0.stepKey == "\(name).restoreOnSource@instance1" && $0.status == "changed" })
        #expect(detail.steps.contains { $0.stepKey == "\(name).verifyRunning@instance1" && $0.status == "changed" })
        // Once the container verifiably runs on the source again, no memory dump stays at rest:
        // not its checkpoint images (tmpfs or disk), not the archive, nothing on the destination.
        let verified = try #require(detail.steps.first { $0.stepKey == "\(name).verifyRunning@instance1" })
        #expect(verified.detail?.contains("imagesRemoved") == true, "\(verified.detail ?? "")")
        let leftSource = try await ApplyLab.leftovers(of: name, on: "instance1")
        #expect(leftSource == "")
        let leftDestination = try await ApplyLab.leftovers(of: name, on: "instance2")
        #expect(leftDestination == "")
        await ApplyLab.wipe(name, on: "instance1")
        await ApplyLab.wipe(name, on: "instance2")
        return result
    }

    @Test func archiveModifiedOnDestinationIsRefusedByDigestAndRolledBack() async throws {
        _ = try await expectRollback("ap-fault-digest", hooks: { name in
            FaultHooks(beforeAct: ["\(name).verifyDigest@instance2": { step, run in
                guard case .verifyDigest(let a) = step.action else { throw ApplyLab.Failure(description: "not a verifyDigest step") }
                let out = try await run("instance2", "test -f \(a.archivePath.shellQuoted) && printf X >> \(a.archivePath.shellQuoted)")
                if !out.succeeded { throw ApplyLab.Failure(description: "the received archive \(a.archivePath) is not there") }
            }])
        }, failing: "SHA-256")
    }

    /// The rollback must not remove the destination's running copy when the source can no longer
    /// take it back (its checkpoint images were removed outside migplan): the container stays
    /// running on the destination, the run fails saying why.
    @Test func rollbackNeverRemovesTheOnlyRunningCopy() async throws {
        try ApplyLab.requireLab()
        let name = "ap-only-copy"
        try await installMemhog(name)
        let boot = try await ApplyLab.report(name, on: "instance1")["boot"] as? String
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let hooks = FaultHooks(beforeAct: ["\(name).verifyRunning@instance2": { _, run in
            _ = try await run("instance1", "d=/var/lib/migplan/checkpoints/\(name)/\(name); rm -rf \"$(readlink -f $d)\" $d")
            throw ApplyLab.Failure(description: "verification sabotaged by the test")
        }])
        let result = try await ApplySession.apply(planFile: try Self.memhogPlan(name), options: try options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed)
        #expect(result.problems.joined(separator: "\n").contains("would lose it"), "\(result.problems)")
        #expect(try await ApplyLab.isRunning(name, on: "instance2"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1")))
        let after = try await ApplyLab.report(name, on: "instance2")
        #expect(after["boot"] as? String == boot)
        await ApplyLab.wipe(name, on: "instance1")
        await ApplyLab.wipe(name, on: "instance2")
    }

    @Test func failedRestoreOnDestinationRollsBack() async throws {
        _ = try await expectRollback("ap-fault-restore", hooks: { name in
            FaultHooks(beforeAct: ["\(name).restore@instance2": { _, run in
                _ = try await run("instance2", "rm -f /var/lib/migplan/restore/\(name)/\(name)/pages-*.img")
            }])
        }, failing: "restore")
    }

    /// Per-container archives (`archives/MIGRATION.d/INSTANCE.tar.zz`, `incoming/MIGRATION.d/…`):
    /// the rollback removes them on both hosts like the single archive.
    @Test func failedRestoreWithPerContainerArchivesRollsBackLeavingNothing() async throws {
        _ = try await expectRollback("ap-fault-perc", hooks: { name in
            FaultHooks(beforeAct: ["\(name).restore@instance2": { _, run in
                _ = try await run("instance2", "ls /var/lib/migplan/incoming/\(name).d/\(name).tar.zz >/dev/null && rm -f /var/lib/migplan/restore/\(name)/\(name)/pages-*.img")
            }])
        }, failing: "restore", archive: "per-container")
    }

    @Test(arguments: ["../escape", "/tmp/ap-absolute-escape"])
    func hostileArchiveIsRefusedBeforeCRIUSeesIt(entry: String) async throws {
        let tag = entry.hasPrefix("/") ? "abs" : "dotdot"
        let result = try await expectRollback("ap-fault-\(tag)", hooks: { name in
            FaultHooks(beforeAct: ["\(name).transfer@controller": { step, run in
                guard case .transfer(let a) = step.action else { throw ApplyLab.Failure(description: "not a transfer step") }
                // Replace the source's archive by one holding a hostile entry (made with Python's tarfile).
                let script = """
                    /usr/bin/python3 - <<'PY'
                    import io, tarfile, gzip
                    buf = io.BytesIO()
                    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
                        data = b"pwned"
                        info = tarfile.TarInfo("\(name)/inventory.img"); info.size = 0
                        t.addfile(info, io.BytesIO(b""))
                        info = tarfile.TarInfo("\(entry)"); info.size = len(data)
                        t.addfile(info, io.BytesIO(data))
                    open("\(a.sourcePath)", "wb").write(gzip.compress(buf.getvalue(), 1))
                    PY
                    """
                let out = try await run("instance1", "test -f \(a.sourcePath.shellQuoted) && " + script)
                if !out.succeeded { throw ApplyLab.Failure(description: "making the hostile archive failed: \(out.stderrText)") }
            }])
        }, failing: "archive refused")
        _ = result
        // Nothing escaped on the destination.
        #expect(!(try await ApplyLab.exec("instance2", "test -e /var/lib/migplan/restore/escape || test -e /dev/shm/migplan/instance2/restore/escape || test -e /tmp/ap-absolute-escape")).succeeded)
    }

    /// A fresh run never takes a file left by an earlier run for its own: an archive planted at the
    /// archive path with a future modification time (an old probe took "newer than the images"
    /// for done and shipped it) is rewritten from this run's checkpoint.
    @Test func staleArchiveLeftByAnEarlierRunIsNeverShipped() async throws {
        try ApplyLab.requireLab()
        let name = "ap-stale"
        try await installMemhog(name)
        let before = try await ApplyLab.report(name, on: "instance1")
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let archive = "/var/lib/migplan/archives/\(name).tar.zz"
        let plant = try await ApplyLab.exec("instance1", "mkdir -p /var/lib/migplan/archives && printf 'stale' | gzip -1 > \(archive) && touch -d '+1 hour' \(archive)")
        #expect(plant.succeeded)
        let result = try await ApplySession.apply(planFile: try Self.memhogPlan(name), options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.steps.contains { $0.stepKey == "\(name).archive@instance1" && $0.status == "changed" })
        let after = try await ApplyLab.report(name, on: "instance2")
        #expect(after["boot"] as? String == before["boot"] as? String)
        #expect(after["intact"] as? Bool == true)
        await ApplyLab.wipe(name, on: "instance1")
        await ApplyLab.wipe(name, on: "instance2")
    }

    @Test func stopRequestedAfterTheCheckpointRollsBackToTheSource() async throws {
        let stop = StopSignal()
        _ = try await expectRollback("ap-fault-stop", hooks: { name in
            FaultHooks(beforeAct: ["\(name).archive@instance1": { _, _ in stop.request() }])
        }, failing: "", outcome: .stopped, stop: stop)
    }

    // MARK: Locks

    @Test func secondApplyOnALockedContainerFailsNamingTheHolder() async throws {
        try ApplyLab.requireLab()
        let name = "ap-locked"
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        var config = JournalConfig(host: "10.77.0.1", port: 5433, sslMode: .verifyFull, sslRootCert: ApplyLab.labDir + "/pg/ca.crt",
                                   connectTimeout: 5)
        config.schema = schema
        let holder = try await Journal.open(config: config, password: try ApplyLab.password())
        try await holder.beginRun(RunRecord(id: "holder-run-1", planName: name, planSHA256: "x"))
        var settings = try options(schema: schema)
        settings.lockTimeout = .seconds(1)
        let o = settings
        let plan = try Self.memhogPlan(name)
        let error: ApplyError? = try await holder.withContainerLocks([name], runID: "holder-run-1", timeout: .seconds(5)) {
            do {
                _ = try await ApplySession.apply(planFile: plan, options: o)
                return nil
            } catch let e as ApplyError {
                return e
            }
        }
        await holder.close()
        let e = try #require(error)
        #expect(e.kind == .locked)
        #expect(e.description.contains("holder-run-1"))
    }

    // MARK: Resume

    @Test func runStoppedAfterTheCheckpointIsCompletedByResume() async throws {
        try ApplyLab.requireLab()
        let name = "ap-resume"
        try await installMemhog(name)
        let boot = try await ApplyLab.report(name, on: "instance1")["boot"] as? String
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let plan = try Self.memhogPlan(name, onFailure: "none")
        // First run: stopped right after the checkpoint (no rollback: onFailure none), so the
        // container runs nowhere and its images wait on the source.
        let stop = StopSignal()
        var first = try options(schema: schema, hooks: FaultHooks(beforeAct: ["\(name).archive@instance1": { _, _ in stop.request() }]))
        first.stop = stop
        let stopped = try await ApplySession.apply(planFile: plan, options: first)
        #expect(stopped.outcome == .stopped, "\(stopped.summary)")
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1")))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance2")))
        // Resume: completed steps are re-probed, the rest runs; the same process continues.
        var second = try options(schema: schema)
        second.resumeRunID = stopped.runID
        let resumed = try await ApplySession.apply(planFile: plan, options: second)
        #expect(resumed.outcome == .succeeded, "\(resumed.summary)")
        #expect(try await ApplyLab.isRunning(name, on: "instance2"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance1")))
        let after = try await ApplyLab.report(name, on: "instance2")
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(resumed.runID, schema: schema)
        #expect(detail.steps.contains { $0.stepKey == "\(name).checkpoint@instance1" && $0.status == "unchanged" })
        #expect(detail.steps.contains { $0.stepKey == "\(name).restore@instance2" && $0.status == "changed" })
        await ApplyLab.wipe(name, on: "instance2")
    }
}
}  // extension ApplyLabSuites
