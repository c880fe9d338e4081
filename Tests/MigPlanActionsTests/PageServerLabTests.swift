import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanJournal
import Testing

extension ApplyLabSuites {
/// `transfer.method: page-server` end to end on the lab (instance7 → instance8): CRIU's pages go
/// from the dump through the controller's SSH channels into the destination's page server; a
/// failure after the dump brings the pages back and restores on the source.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct PageServerLabTests {
    static let source = "instance7"
    static let destination = "instance8"

    func options(schema: String, hooks: FaultHooks = FaultHooks()) throws -> ApplyOptions {
        var o = ApplyOptions()
        o.environment = try ApplyLab.applyEnvironment()
        o.journalSchema = schema
        o.hooks = hooks
        o.lockTimeout = .seconds(10)
        return o
    }

    /// A page-server plan moving `name` from instance7 to instance8 (absolute lab paths).
    static func plan(_ name: String) throws -> String {
        try ApplyLab.writeRuncPlan(
            name, from: source, to: destination,
            settings: "transfer:\n  method: page-server\n  path: relay\nretry:\n  attempts: 1\nonFailure: rollback",
            directory: "ps-plan")
    }

    func installMemhog(_ name: String, mb: Int = 24) async throws {
        for host in [Self.source, Self.destination] {
            await ApplyLab.wipe(name, on: host)
            try await ApplyLab.installBundle("memhog", on: host, name: name,
                                             args: ["--mb", String(mb), "--mode", "incompressible", "--period", "0.5"])
        }
        try await ApplyLab.startRunc(name, on: Self.source)
    }

    @Test func pageServerMoveKeepsTheProcessAndItsMemoryAndLeavesNothingBehind() async throws {
        try ApplyLab.requireLab()
        let name = "ps-move"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: Self.source)

        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(try await ApplyLab.isRunning(name, on: Self.destination))
        #expect(!(try await ApplyLab.isRunning(name, on: Self.source)))
        let after = try await ApplyLab.report(name, on: Self.destination)
        #expect(after["boot"] as? String == before["boot"] as? String, "the same process continued")
        #expect((after["counter"] as? Int ?? -1) >= (before["counter"] as? Int ?? 0), "the counter continued")
        #expect(after["intact"] as? Bool == true, "memory digest unchanged")

        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let checkpoint = try #require(detail.steps.first { $0.stepKey == "\(name).checkpoint@\(Self.source)" })
        // The pages crossed the controller (hashed), more than the container's memory.
        let pageBytes = checkpoint.detail.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String] }?["pageBytes"]
        #expect(Int(pageBytes ?? "") ?? 0 > 24 << 20, "\(checkpoint.detail ?? "")")
        let restore = try #require(detail.steps.first { $0.stepKey == "\(name).restore@\(Self.destination)" })
        #expect(restore.detail?.contains("imagesVerified") == true)
        let metric = try #require(detail.metrics.first { $0.container == name })
        #expect((metric.downtime ?? 0) > 0)
        // No page server, listener or images left on either host.
        #expect(try await ApplyLab.leftovers(of: name, on: Self.source) == "")
        #expect(try await ApplyLab.leftovers(of: name, on: Self.destination) == "")
        // (A zombie waiting for the lab's PID 1 to reap it has exited: not counted.)
        let servers = try await ApplyLab.exec(Self.destination,
            "ps -eo stat=,args= | grep -v '^Z' | grep -E '[c]riu page-server .*/restore/\(name)/' || true")
        #expect(servers.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "")
        await ApplyLab.wipe(name, on: Self.destination)
    }

    @Test func restoreFailingAfterThePagesLeftBringsThemBackAndTheSameProcessRunsOnTheSource() async throws {
        try ApplyLab.requireLab()
        let name = "ps-fault-restore"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: Self.source)
        // Sabotage the destination's bundle after the dump succeeded: its restore must fail.
        let hooks = FaultHooks(beforeAct: ["\(name).restore@\(Self.destination)": { _, run in
            _ = try await run(Self.destination, "mv /var/lib/migplan/bundles/\(name)/config.json /var/lib/migplan/bundles/\(name)/config.json.off")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        _ = try? await ApplyLab.exec(Self.destination, "mv /var/lib/migplan/bundles/\(name)/config.json.off /var/lib/migplan/bundles/\(name)/config.json")
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(try await ApplyLab.isRunning(name, on: Self.source))
        #expect(!(try await ApplyLab.isRunning(name, on: Self.destination)))
        let after = try await ApplyLab.report(name, on: Self.source)
        #expect(after["boot"] as? String == before["boot"] as? String, "the same process runs again on the source")
        #expect((after["counter"] as? Int ?? -1) >= (before["counter"] as? Int ?? 0), "the counter did not go back")
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == "rolled-back")
        let returned = try #require(detail.steps.first { $0.stepKey == "\(name).pageServerReturn@controller" })
        #expect(returned.status == "changed")
        #expect(returned.detail?.contains("sha256") == true, "the pages came back through the validating relay: \(returned.detail ?? "")")
        #expect(try await ApplyLab.leftovers(of: name, on: Self.source) == "")
        #expect(try await ApplyLab.leftovers(of: name, on: Self.destination) == "")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
    }

    /// Pages changed on the destination after they were received: the restore refuses them, and
    /// the rollback refuses to bring them back (they differ from the digests recorded at
    /// receipt), so the container is restored nowhere from altered memory; its images stay for
    /// the operator.
    @Test func pagesChangedOnTheDestinationAreNeitherRestoredThereNorBroughtBack() async throws {
        try ApplyLab.requireLab()
        let name = "ps-fault-tamper"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let hooks = FaultHooks(beforeAct: ["\(name).restore@\(Self.destination)": { _, run in
            _ = try await run(Self.destination, "printf X >> \"$(ls /var/lib/migplan/restore/\(name)/\(name)/pages-*.img | head -1)\"")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let restore = try #require(detail.steps.first { $0.stepKey == "\(name).restore@\(Self.destination)" })
        #expect(restore.status == "failed")
        #expect(restore.detail?.contains("changed since their digest was recorded") == true, "\(restore.detail ?? "")")
        let returned = try #require(detail.steps.first { $0.stepKey == "\(name).pageServerReturn@controller" })
        #expect(returned.status == "failed")
        #expect(returned.detail?.contains("differ from the digests recorded") == true, "\(returned.detail ?? "")")
        #expect(!(try await ApplyLab.isRunning(name, on: Self.source)))
        #expect(!(try await ApplyLab.isRunning(name, on: Self.destination)))
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
        _ = try? await ApplyLab.exec(Self.destination, "rm -rf /var/lib/migplan/restore/\(name)")
    }

    @Test func dumpFailingLeavesTheContainerRunningOnTheSource() async throws {
        try ApplyLab.requireLab()
        let name = "ps-fault-dump"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: Self.source)
        // The page server is gone before the dump: CRIU cannot send its pages and must resume the container.
        let hooks = FaultHooks(beforeAct: ["\(name).checkpoint@\(Self.source)": { _, run in
            _ = try await run(Self.destination, "kill $(cat /var/lib/migplan/restore/\(name)/\(name).pageserver.pid); sleep 0.2")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(try await ApplyLab.isRunning(name, on: Self.source))
        #expect(!(try await ApplyLab.isRunning(name, on: Self.destination)))
        let after = try await ApplyLab.report(name, on: Self.source)
        #expect(after["boot"] as? String == before["boot"] as? String, "CRIU resumed the same process")
        #expect(after["intact"] as? Bool == true)
        #expect(try await ApplyLab.leftovers(of: name, on: Self.destination) == "")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
    }

    /// The step detail (JSON object of strings) of one step of a run.
    static func detail(_ detail: JournalReader.RunDetail, _ key: String) -> [String: String] {
        detail.steps.first { $0.stepKey == key }?.detail
            .flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String] } ?? [:]
    }

    /// A stale pid file naming an unrelated process: preparing the page server (which stops an
    /// earlier one by its pid file) leaves that process alone.
    @Test func aStalePageServerPidFileNeverKillsAnUnrelatedProcess() async throws {
        try ApplyLab.requireLab()
        let name = "ps-stale-pid"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let saved = "/tmp/\(name).sleep.pid"
        let hooks = FaultHooks(beforeAct: ["\(name).pageServerPrepare@controller": { _, run in
            _ = try await run(Self.destination, "mkdir -p /var/lib/migplan/restore/\(name); setsid sleep 300 >/dev/null 2>&1 </dev/null & "
                              + "echo $! > \(saved); cp \(saved) /var/lib/migplan/restore/\(name)/\(name).pageserver.pid")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        let alive = try await ApplyLab.exec(Self.destination, "p=$(cat \(saved)); tr '\\0' ' ' < /proc/$p/cmdline; kill $p; rm -f \(saved)")
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(alive.stdoutText.hasPrefix("sleep 300"), "the process the stale pid file named still runs: \(alive.stdoutText)")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
    }

    /// `/dev/shm/migplan/HOST` pre-created by someone else (owned by nobody, mode 1777): the
    /// move keeps its images on disk, says so, and leaves that directory as it found it.
    @Test func aForeignSharedMemoryDirectoryIsNotUsedForImagesAndTheMoveSaysSo() async throws {
        try ApplyLab.requireLab()
        let name = "ps-shm-foreign"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let dir = "/dev/shm/migplan/\(Self.source)"
        let aside = "/dev/shm/migplan-\(Self.source).\(name)"
        _ = try await ApplyLab.exec(Self.source, "mkdir -p /dev/shm/migplan; rm -rf \(aside); if [ -e \(dir) ]; then mv \(dir) \(aside); fi; "
                                    + "mkdir \(dir) && chown nobody \(dir) && chmod 1777 \(dir)")
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema))
        let after = try await ApplyLab.exec(Self.source, "stat -c '%U %a' \(dir); ls -A \(dir) | wc -l")
        _ = try? await ApplyLab.exec(Self.source, "rm -rf \(dir); if [ -e \(aside) ]; then mv \(aside) \(dir); fi")
        #expect(result.outcome == .succeeded, "\(result.summary)")
        #expect(after.stdoutText == "nobody 1777\n0\n", "the foreign directory is untouched: \(after.stdoutText)")
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let prepare = Self.detail(detail, "\(name).pageServerPrepare@controller")
        #expect(prepare["images"] == "disk")
        #expect(prepare["tmpfsRefused"]?.contains("owned by uid") == true, "\(prepare)")
        #expect(try await ApplyLab.isRunning(name, on: Self.destination))
        await ApplyLab.wipe(name, on: Self.destination)
    }

    /// The page server logged an error (the finish fails after the pages arrived) and the
    /// source's checkpoint directory already holds a stray `pages-1.img` (as an interrupted
    /// return would leave): the rollback still brings back the pages checked against the digest
    /// taken when the page server exited, and the same process runs again on the source.
    @Test func aFailedFinishStillBringsBackOnlyVerifiedPages() async throws {
        try ApplyLab.requireLab()
        let name = "ps-fault-finish"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: Self.source)
        let hooks = FaultHooks(beforeAct: [
            "\(name).pageServerFinish@controller": { _, run in
                _ = try await run(Self.destination, "echo 'Error (00.000000): injected by the test' >> /var/lib/migplan/restore/\(name)/\(name).pageserver.log")
            },
            "\(name).pageServerReturn@controller": { _, run in
                _ = try await run(Self.source, "printf stale > /var/lib/migplan/checkpoints/\(name)/\(name)/pages-1.img")
            },
        ])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(try await ApplyLab.isRunning(name, on: Self.source))
        let after = try await ApplyLab.report(name, on: Self.source)
        #expect(after["boot"] as? String == before["boot"] as? String, "the same process runs again on the source")
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let finish = try #require(detail.steps.first { $0.stepKey == "\(name).pageServerFinish@controller" })
        #expect(finish.status == "failed")
        #expect(Self.detail(detail, "\(name).pageServerReturn@controller")["checkedAgainstManifest"] == "true")
        #expect(try await ApplyLab.leftovers(of: name, on: Self.source) == "")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
    }

    /// No digest of the received pages was ever taken (the finish failed before hashing): the
    /// rollback refuses to restore unverified memory; the container stays down and the error
    /// says where its checkpoint is.
    @Test func withoutARecordedDigestTheRollbackRefusesAndSaysWhereTheCheckpointIs() async throws {
        try ApplyLab.requireLab()
        let name = "ps-no-digest"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let hooks = FaultHooks(beforeAct: ["\(name).pageServerFinish@controller": { _, run in
            _ = try await run(Self.destination, "sleep 0.5; rm -f /var/lib/migplan/restore/\(name)/\(name).pageserver.pid")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(!(try await ApplyLab.isRunning(name, on: Self.source)))
        #expect(!(try await ApplyLab.isRunning(name, on: Self.destination)))
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let returned = try #require(detail.steps.first { $0.stepKey == "\(name).pageServerReturn@controller" })
        #expect(returned.status == "failed")
        #expect(returned.detail?.contains("no digest") == true, "\(returned.detail ?? "")")
        #expect(returned.detail?.contains("/var/lib/migplan/restore/\(name)/\(name)") == true, "\(returned.detail ?? "")")
        let pages = try await ApplyLab.exec(Self.destination, "ls /var/lib/migplan/restore/\(name)/\(name)/ | grep -c '^pages-'")
        #expect(pages.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) != "0", "the pages stay on the destination")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
        _ = try? await ApplyLab.exec(Self.destination, "rm -rf /var/lib/migplan/restore/\(name)")
    }
    /// The source's images on disk (its tmpfs directory refused) and the restore failing after
    /// the dump: the pages come back into the on-disk checkpoint directory (the two-rename
    /// return) and the same process runs again on the source.
    @Test func aRollbackBringsThePagesBackIntoACheckpointDirectoryOnDisk() async throws {
        try ApplyLab.requireLab()
        let name = "ps-disk-return"
        try await installMemhog(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let before = try await ApplyLab.report(name, on: Self.source)
        let dir = "/dev/shm/migplan/\(Self.source)"
        let aside = "/dev/shm/migplan-\(Self.source).\(name)"
        _ = try await ApplyLab.exec(Self.source, "mkdir -p /dev/shm/migplan; rm -rf \(aside); if [ -e \(dir) ]; then mv \(dir) \(aside); fi; "
                                    + "mkdir \(dir) && chown nobody \(dir) && chmod 1777 \(dir)")
        let hooks = FaultHooks(beforeAct: ["\(name).restore@\(Self.destination)": { _, run in
            _ = try await run(Self.destination, "mv /var/lib/migplan/bundles/\(name)/config.json /var/lib/migplan/bundles/\(name)/config.json.off")
        }])
        let result = try await ApplySession.apply(planFile: try Self.plan(name), options: try options(schema: schema, hooks: hooks))
        _ = try? await ApplyLab.exec(Self.destination, "mv /var/lib/migplan/bundles/\(name)/config.json.off /var/lib/migplan/bundles/\(name)/config.json")
        _ = try? await ApplyLab.exec(Self.source, "rm -rf \(dir); if [ -e \(aside) ]; then mv \(aside) \(dir); fi")
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(try await ApplyLab.isRunning(name, on: Self.source))
        let after = try await ApplyLab.report(name, on: Self.source)
        #expect(after["boot"] as? String == before["boot"] as? String, "the same process runs again on the source")
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(Self.detail(detail, "\(name).pageServerPrepare@controller")["images"] == "disk")
        #expect(Self.detail(detail, "\(name).pageServerReturn@controller")["checkedAgainstManifest"] == "true")
        #expect(try await ApplyLab.leftovers(of: name, on: Self.source) == "")
        let stray = try await ApplyLab.exec(Self.source, "ls -d /var/lib/migplan/checkpoints/\(name)/\(name).* 2>/dev/null; true")
        #expect(stray.stdoutText == "", "no staging or old directory left: \(stray.stdoutText)")
        await ApplyLab.wipe(name, on: Self.source)
        await ApplyLab.wipe(name, on: Self.destination)
    }
}
}
