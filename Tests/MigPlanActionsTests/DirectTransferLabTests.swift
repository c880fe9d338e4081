import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import Testing

/// Moves between instance3 and instance4 for the direct-transfer and replay suites (`dt-` names).
enum DirectLab {
    static let source = "instance3"
    static let destination = "instance4"
    static let keysFile = "/var/lib/migplan/ssh/authorized_keys"

    static func plan(_ name: String, path: String = "direct", compression: String = "none") throws -> String {
        try ApplyLab.writeRuncPlan(
            name, from: source, to: destination,
            settings: ApplyLab.statefulSettings(compression: compression, path: path),
            hosts: "  instance3: {address: 10.77.0.13, key: controller}\n  instance4: {address: 10.77.0.14, key: controller, transferKeysFile: \(keysFile)}",
            directory: "dt-plan")
    }

    static func options(schema: String, hooks: FaultHooks = FaultHooks()) throws -> ApplyOptions {
        var o = ApplyOptions()
        o.environment = try ApplyLab.applyEnvironment()
        o.journalSchema = schema
        o.hooks = hooks
        o.lockTimeout = .seconds(10)
        return o
    }

    static func wipe(_ name: String) async {
        for host in [source, destination] {
            await ApplyLab.wipe(name, on: host)
            _ = try? await ApplyLab.exec(host, "rm -rf /var/lib/migplan/bundles/\(name) /var/lib/migplan/state/\(name) /tmp/\(name)-*")
        }
    }

    /// A fresh 24 MiB memhog running on the source; returns its boot token.
    static func start(_ name: String) async throws -> String? {
        try ApplyLab.requireLab()
        await wipe(name)
        for host in [source, destination] {
            try await ApplyLab.installBundle("memhog", on: host, name: name,
                                             args: ["--mb", "24", "--mode", "half", "--fraction", "0.05", "--period", "0.5"])
        }
        try await ApplyLab.startRunc(name, on: source)
        return try await ApplyLab.report(name, on: source)["boot"] as? String
    }

    /// No key line for `name`'s archive on the destination, no key directory on the source.
    static func expectNoKeyLeft(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let lines = try await ApplyLab.exec(destination, "grep -c -F 'incoming/\(name).tar' \(keysFile) 2>/dev/null || true")
        #expect(lines.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "0" || lines.stdoutText.isEmpty,
                "key lines left on \(destination): \(lines.stdoutText)", sourceLocation: sourceLocation)
        let dirs = try await ApplyLab.exec(source, "grep -l -F 'incoming/\(name).tar' /var/lib/migplan/keys/*/target /var/lib/migplan/keys/.new-*/target 2>/dev/null || true")
        #expect(dirs.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                "key directories left on \(source): \(dirs.stdoutText)", sourceLocation: sourceLocation)
    }

    /// The container runs on the source only, the same process, memory intact; the run rolled back.
    static func expectRolledBack(_ result: ApplyResult, _ name: String, boot: String?, schema: String, refusing: String,
                                 sourceLocation: SourceLocation = #_sourceLocation) async throws {
        #expect(result.outcome == .failed, "\(result.summary)", sourceLocation: sourceLocation)
        #expect(result.report?.rolledBack == ["\(name).rollback"], sourceLocation: sourceLocation)
        #expect(result.problems.joined(separator: "\n").contains(refusing), "\(result.problems)", sourceLocation: sourceLocation)
        #expect(try await ApplyLab.isRunning(name, on: source), sourceLocation: sourceLocation)
        #expect(!(try await ApplyLab.isRunning(name, on: destination)), sourceLocation: sourceLocation)
        let after = try await ApplyLab.report(name, on: source)
        #expect(after["boot"] as? String == boot, sourceLocation: sourceLocation)
        #expect(after["intact"] as? Bool == true, sourceLocation: sourceLocation)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == "rolled-back", sourceLocation: sourceLocation)
        let refused = detail.steps.first { $0.stepKey == "\(name).verifyDigest@\(destination)" }
        #expect(refused?.status == "failed", sourceLocation: sourceLocation)
        #expect(refused?.detail?.contains(refusing) == true, "\(refused?.detail ?? "")", sourceLocation: sourceLocation)
        // Nothing was unpacked or restored on the destination.
        #expect(!detail.steps.contains { $0.stepKey == "\(name).unpack@\(destination)" && ($0.status == "changed" || $0.status == "failed") },
                sourceLocation: sourceLocation)
        #expect(try await ApplyLab.leftovers(of: name, on: destination) == "", sourceLocation: sourceLocation)
    }
}

/// Thread-safe notes a fault hook leaves for the test.
final class HookNotes: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: String] = [:]
    subscript(key: String) -> String? {
        get { lock.withLock { values[key] } }
        set { lock.withLock { values[key] = newValue } }
    }
}

extension ApplyLabSuites {
/// `path: direct` on the lab (instance3 → instance4): the source sends the archive itself with a
/// one-time key restricted to receiving that archive from the source's address, revoked afterwards.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct DirectTransferLabTests {
    @Test func directMoveRestoresTheContainerWithItsStateAndLeavesNoKeyBehind() async throws {
        let name = "dt-direct"
        let boot = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schema))
        #expect(result.outcome == .succeeded, "\(result.summary) \(result.problems)")
        #expect(!(try await ApplyLab.isRunning(name, on: DirectLab.source)))
        #expect(try await ApplyLab.isRunning(name, on: DirectLab.destination))
        let after = try await ApplyLab.report(name, on: DirectLab.destination)
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        let transfer = try #require(detail.steps.first { $0.stepKey == "\(name).transfer@instance3" })
        #expect(transfer.status == "changed")
        #expect(transfer.detail?.contains("\"route\":\"direct\"") == true, "\(transfer.detail ?? "")")
        for step in ["\(name).issueTransferKey@controller", "\(name).revokeTransferKey@controller"] {
            #expect(detail.steps.first { $0.stepKey == step }?.status == "changed", "\(step)")
        }
        // The move id: in the journal (transfer, verifyDigest, restore) and in the destination's ledger.
        let restore = try #require(detail.steps.first { $0.stepKey == "\(name).restore@instance4" })
        let moveID = try #require(restore.detail.flatMap { d in
            d.range(of: #"[0-9a-f]{32}"#, options: .regularExpression).map { String(d[$0]) }
        })
        #expect(transfer.detail?.contains(moveID) == true)
        let ledger = try await ApplyLab.exec("instance4", "cat /var/lib/migplan/ledger/restored-moves")
        #expect(ledger.stdoutText.split(separator: "\n").contains(Substring("\(moveID) \(name)")), "\(ledger.stdoutText)")
        try await DirectLab.expectNoKeyLeft(name)
        #expect(try await ApplyLab.leftovers(of: name, on: "instance3") == "")
        #expect(try await ApplyLab.leftovers(of: name, on: "instance4") == "")
        await DirectLab.wipe(name)
    }

    /// The key, taken from the source before the transfer: refused from another address, no
    /// tunnel, any command replaced by the receive command, and spent after that one use (so the
    /// move's own transfer is refused too, and the move rolls back with the key gone).
    @Test func oneTimeKeyRunsOnlyTheReceiveCommandOnlyFromTheSourceAndOnlyOnce() async throws {
        let name = "dt-keyonly"
        let boot = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let notes = HookNotes()
        let controllerKey = FileManager.default.temporaryDirectory.appendingPathComponent("dt-key-\(UUID().uuidString)").path
        defer { unlink(controllerKey) }
        let hooks = FaultHooks(beforeAct: ["\(name).transfer@instance3": { _, run in
            // The key is issued: find it on the source.
            let found = try await run("instance3", "grep -l -F 'incoming/\(name).tar' /var/lib/migplan/keys/*/target | head -n 1")
            let dir = (found.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) as NSString).deletingLastPathComponent
            notes["keyDir"] = dir
            let ssh = "ssh -F /dev/null -T -o IdentitiesOnly=yes -i \(dir)/id -o UserKnownHostsFile=\(dir)/known_hosts "
                + "-o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 root@10.77.0.14"
            // 1. From another address (the controller, 10.77.0.1) with the same private key: refused.
            let key = try await run("instance3", "cat \(dir)/id")
            _ = FileManager.default.createFile(atPath: controllerKey, contents: Data(key.stdout), attributes: [.posixPermissions: 0o600])
            let elsewhere = try await ApplyLab.run(["/usr/bin/ssh", "-F", "/dev/null", "-T", "-o", "IdentitiesOnly=yes", "-i", controllerKey,
                                                    "-o", "UserKnownHostsFile=\(ApplyLab.labDir)/known_hosts", "-o", "StrictHostKeyChecking=yes",
                                                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "root@10.77.0.14", "echo reached"])
            notes["elsewhere"] = "exit \(elsewhere.exitStatus) \(elsewhere.stdoutText) \(elsewhere.stderrText)"
            // 2. A tunnel through the destination (direct-tcpip channel): refused.
            let forward = try await run("instance3", "\(ssh) -W 127.0.0.1:22 < /dev/null 2>&1; echo \"exit $?\"")
            notes["forward"] = forward.stdoutText
            // 3. Another command: the forced receive runs instead (prints a digest), the other never.
            let other = try await run("instance3", "\(ssh) 'touch /tmp/\(name)-pwned; echo pwned' < /dev/null; echo \"exit $?\"")
            notes["otherCommand"] = other.stdoutText
            let pwned = try await run("instance4", "test -e /tmp/\(name)-pwned && echo yes || echo no")
            notes["pwned"] = pwned.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            // 4. Used once: spent.
            let again = try await run("instance3", "\(ssh) receive < /dev/null 2>&1; echo \"exit $?\"")
            notes["again"] = again.stdoutText
        }])
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schema, hooks: hooks))
        #expect(notes["keyDir"]?.hasPrefix("/var/lib/migplan/keys/") == true, "\(notes["keyDir"] ?? "")")
        #expect(notes["elsewhere"]?.hasPrefix("exit 255") == true, "\(notes["elsewhere"] ?? "")")
        #expect(notes["elsewhere"]?.contains("reached") == false)
        #expect(notes["forward"]?.contains("exit 0") == false, "\(notes["forward"] ?? "")")
        let other = notes["otherCommand"] ?? ""
        #expect(!other.contains("pwned"), "\(other)")
        #expect(other.range(of: #"^[0-9a-f]{64}\n"#, options: .regularExpression) != nil, "the forced receive command ran: \(other)")
        #expect(notes["pwned"] == "no")
        #expect(notes["again"]?.contains("Permission denied") == true, "\(notes["again"] ?? "")")
        // The move's own transfer found the key spent: rolled back, the container unharmed on the source.
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(try await ApplyLab.isRunning(name, on: "instance3"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance4")))
        #expect(try await ApplyLab.report(name, on: "instance3")["boot"] as? String == boot)
        try await DirectLab.expectNoKeyLeft(name)
        await DirectLab.wipe(name)
    }

    /// The controller SIGKILLed (the real `migplan`, `MIGPLAN_FAULT_INJECT`) after the key was
    /// issued, or after the transfer; `apply --resume` revokes the key, and accepts the archive the
    /// killed run made (its manifest names that run).
    @Test(arguments: ["issueTransferKey@controller", "transfer@instance3"])
    func resumedDirectMoveCompletesAcceptsItsPredecessorsArchiveAndRevokesTheKey(_ boundary: String) async throws {
        let name = "dt-resume"
        let boot = try await DirectLab.start(name)
        let plan = try DirectLab.plan(name)
        let killed = try await CrashLab.migplan(["apply", "--quiet", plan],
                                                extra: [FaultInjection.environmentVariable: "kill-after:\(name).\(boundary)"])
        #expect(killed.killedBySignal, "\(boundary): \(killed.status) \(killed.stderr.suffix(800))")
        let crashed = try #require(try await CrashLab.newestRun(plan: plan)["id"] as? String)
        let resumed = try await CrashLab.migplan(["apply", "--quiet", "--lock-timeout", "45", "--resume", crashed, plan])
        #expect(resumed.status == 0, "\(boundary): resume exited \(resumed.status): \(resumed.stderr.suffix(1500))")
        let run = try await CrashLab.newestRun(plan: plan)
        #expect(run["outcome"] as? String == "succeeded", "\(run)")
        if boundary.hasPrefix("transfer") {
            // The archive was not sent again: the resumed run checked and accepted the killed run's move.
            let statuses = CrashLab.statuses(try await CrashLab.show(try #require(run["id"] as? String), plan: plan))
            #expect(statuses["\(name).transfer@instance3"] == "unchanged", "\(statuses)")
            #expect(statuses["\(name).verifyDigest@instance4"] == "changed" || statuses["\(name).verifyDigest@instance4"] == "unchanged", "\(statuses)")
        }
        #expect(try await ApplyLab.isRunning(name, on: "instance4"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance3")))
        let after = try await ApplyLab.report(name, on: "instance4")
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        try await DirectLab.expectNoKeyLeft(name)
        #expect(try await ApplyLab.leftovers(of: name, on: "instance3") == "")
        #expect(try await ApplyLab.leftovers(of: name, on: "instance4") == "")
        await DirectLab.wipe(name)
    }

    /// Only this archive's key line is added and removed: a keys file whose last line (an admin's
    /// key that even names the archive) lacks its newline keeps that line byte for byte.
    @Test func keysFileWithoutTrailingNewlineKeepsItsOtherLinesThroughADirectMove() async throws {
        let name = "dt-keep"
        _ = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let f = DirectLab.keysFile
        let backup = "/tmp/\(name)-keys-backup"
        // Never a usable key: from= an address no host has.
        let admin = "from=\"10.77.0.250\",restrict ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBWEquXdFnE1kFZTtVtYp8CY9Q0mCb6Yj0aDb3BmXn3e admin exec 3> /var/lib/migplan/incoming/\(name).tar.part"
        let saved = try await ApplyLab.exec(DirectLab.destination,
                                            "rm -f \(backup); if [ -f \(f) ]; then cp -p \(f) \(backup); fi; printf '%s' \(admin.shellQuoted) > \(f) && chmod 600 \(f)")
        #expect(saved.succeeded, "\(saved.stderrText)")
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schema))
        let after = try await ApplyLab.exec(DirectLab.destination, "cat \(f)")
        _ = try await ApplyLab.exec(DirectLab.destination, "if [ -f \(backup) ]; then mv -f \(backup) \(f); else rm -f \(f); fi")
        #expect(result.outcome == .succeeded, "\(result.summary) \(result.problems)")
        #expect(try await ApplyLab.isRunning(name, on: DirectLab.destination))
        // The only difference: the newline added before the (removed) one-time key's line.
        #expect(after.stdoutText == admin + "\n", "\(after.stdoutText)")
        try await DirectLab.expectNoKeyLeft(name)
        await DirectLab.wipe(name)
    }

    @Test func failedDirectTransferRollsBackAndRevokesTheKey() async throws {
        let name = "dt-fail"
        let boot = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        // The archive vanishes before the source sends it: the transfer fails (both attempts).
        let hooks = FaultHooks(beforeAct: ["\(name).transfer@instance3": { _, run in
            _ = try await run("instance3", "rm -f /var/lib/migplan/archives/\(name).tar")
        }])
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(try await ApplyLab.isRunning(name, on: "instance3"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance4")))
        #expect(try await ApplyLab.report(name, on: "instance3")["boot"] as? String == boot)
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == "rolled-back")
        #expect(detail.steps.first { $0.stepKey == "\(name).rollbackTransferKey@controller" }?.status == "changed")
        try await DirectLab.expectNoKeyLeft(name)
        await DirectLab.wipe(name)
    }
}
}
