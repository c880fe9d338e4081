import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import Testing

extension ApplyLabSuites {
/// Replay protection on the lab (instance3 → instance4): the destination's `verifyDigest` refuses,
/// before anything is unpacked, an archive whose manifest was edited, that another run made, or
/// whose move was already restored; each time the move rolls back and the container keeps
/// running, with its state, on the source only.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct ReplayProtectionLabTests {
    static let incoming = "/var/lib/migplan/incoming"

    func refuse(_ name: String, path: String = "relay", refusing: String, hook: @escaping FaultHooks.Hook) async throws {
        let boot = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let hooks = FaultHooks(beforeAct: ["\(name).verifyDigest@instance4": hook])
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name, path: path),
                                                  options: try DirectLab.options(schema: schema, hooks: hooks))
        try await DirectLab.expectRolledBack(result, name, boot: boot, schema: schema, refusing: refusing)
        try await DirectLab.expectNoKeyLeft(name)
        await DirectLab.wipe(name)
    }

    @Test func editedManifestIsRefusedByItsHMACAndRolledBack() async throws {
        let name = "dt-replay-mac"
        let m = "\(Self.incoming)/\(name).tar.manifest"
        try await refuse(name, refusing: "HMAC does not verify") { _, run in
            // A different container list, same MAC.
            let out = try await run("instance4", "sed -i 's/\"instances\":\\[\"/\"instances\":[\"x/' \(m) && grep -q '\"x\(name)\"' \(m)")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not edit \(m): \(out.stderrText)") }
        }
    }

    @Test func editedManifestOfADirectMoveIsRefusedToo() async throws {
        let name = "dt-replay-dmac"
        let m = "\(Self.incoming)/\(name).tar.manifest"
        try await refuse(name, path: "direct", refusing: "HMAC does not verify") { _, run in
            let out = try await run("instance4", "sed -i 's/\"bytes\":/\"bytes\":1/' \(m)")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not edit \(m): \(out.stderrText)") }
        }
    }

    @Test func archiveAndManifestOfAnotherRunAreRefusedAndRolledBack() async throws {
        let name = "dt-replay-run"
        let d = "\(Self.incoming)/\(name).tar"
        let saved = "/tmp/\(name)-saved"
        // Run A: keep what it received (archive, manifest, MAC), then stop it there (it rolls back).
        let boot = try await DirectLab.start(name)
        let schemaA = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schemaA) } }
        let keep = FaultHooks(beforeAct: ["\(name).verifyDigest@instance4": { _, run in
            let out = try await run("instance4", "rm -rf \(saved) && mkdir -p \(saved) && cp \(d) \(d).manifest \(d).manifest.hmac \(saved)/")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not keep run A's archive: \(out.stderrText)") }
            throw ApplyLab.Failure(description: "run A ends here on purpose")
        }])
        let first = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schemaA, hooks: keep))
        #expect(first.outcome == .failed, "\(first.summary)")
        #expect(try await ApplyLab.isRunning(name, on: "instance3"))
        #expect(try await ApplyLab.report(name, on: "instance3")["boot"] as? String == boot)
        // Run B: the archive it received is replaced by run A's, manifest and MAC included.
        let schemaB = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schemaB) } }
        let swap = FaultHooks(beforeAct: ["\(name).verifyDigest@instance4": { _, run in
            let out = try await run("instance4", "cp \(saved)/\(name).tar \(d) && cp \(saved)/\(name).tar.manifest \(d).manifest && "
                                    + "cp \(saved)/\(name).tar.manifest.hmac \(d).manifest.hmac")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not put run A's archive in place: \(out.stderrText)") }
        }])
        let second = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schemaB, hooks: swap))
        try await DirectLab.expectRolledBack(second, name, boot: boot, schema: schemaB, refusing: "belongs to run \(first.runID)")
        _ = try? await ApplyLab.exec("instance4", "rm -rf \(saved)")
        await DirectLab.wipe(name)
    }

    @Test func archiveWhoseMoveWasAlreadyRestoredIsRefusedAsReplay() async throws {
        let name = "dt-replay-ledger"
        let m = "\(Self.incoming)/\(name).tar.manifest"
        try await refuse(name, refusing: "was already restored on this host (replay)") { _, run in
            // The ledger already names this move (as after a restore of the same archive).
            let out = try await run("instance4", "id=$(grep -o '\"moveID\":\"[0-9a-f]*\"' \(m) | cut -d'\"' -f4) && [ -n \"$id\" ] && "
                                    + "mkdir -p /var/lib/migplan/ledger && echo \"$id\" >> /var/lib/migplan/ledger/restored-moves")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not read the move id: \(out.stderrText)") }
        }
    }

    /// The restore act itself consults the ledger (`MOVEID CONTAINER`), also when the gate before
    /// it passed (as on `apply --resume` after the container died on the destination): refused
    /// as a replay, rolled back, the container back on the source with its state.
    @Test func restoreOfAMoveTheLedgerAlreadyHoldsForTheContainerIsRefused() async throws {
        let name = "dt-replay-restore"
        let boot = try await DirectLab.start(name)
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let m = "\(Self.incoming)/\(name).tar.manifest"
        let hooks = FaultHooks(beforeAct: ["\(name).restore@instance4": { _, run in
            let out = try await run("instance4", "id=$(grep -o '\"moveID\":\"[0-9a-f]*\"' \(m) | cut -d'\"' -f4) && [ -n \"$id\" ] && "
                                    + "mkdir -p /var/lib/migplan/ledger && echo \"$id \(name)\" >> /var/lib/migplan/ledger/restored-moves")
            if !out.succeeded { throw ApplyLab.Failure(description: "could not read the move id: \(out.stderrText)") }
        }])
        let result = try await ApplySession.apply(planFile: try DirectLab.plan(name), options: try DirectLab.options(schema: schema, hooks: hooks))
        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(result.problems.joined(separator: "\n").contains("refusing to restore it again (replay)"), "\(result.problems)")
        #expect(try await ApplyLab.isRunning(name, on: "instance3"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance4")))
        let after = try await ApplyLab.report(name, on: "instance3")
        #expect(after["boot"] as? String == boot)
        #expect(after["intact"] as? Bool == true)
        await DirectLab.wipe(name)
    }
}
}
