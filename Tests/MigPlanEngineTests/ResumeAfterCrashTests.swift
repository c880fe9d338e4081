import Foundation
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

/// Resuming after the controller was killed (SIGKILL) late in a move: faults found by
/// `CrashResumeDisruptiveTests` on the lab, reproduced with fakes.
@Suite("Executor resume after a controller crash")
struct ResumeAfterCrashTests {
    /// Killed after `cleanupSource`: the move had been verified on the destination, and the
    /// source's checkpoint images and archive were already removed. Re-probing the checkpoint
    /// found no images, re-did it on a container that no longer exists there, and its failure
    /// triggered the rollback, which removed the only running copy on the destination.
    @Test func aResumeAfterTheMoveWasVerifiedDoesNotRedoTheCheckpointWhoseImagesTheCleanupRemoved() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let ids = graph.steps.map(\.id)
        let kind = { (id: StepID) in graph.step(id)!.action.kind }
        let verified = try #require(ids.firstIndex { kind($0) == "verifyRunning" })
        let cleanupSource = try #require(ids.firstIndex { kind($0) == "cleanupSource" })
        #expect(verified < cleanupSource)
        let recorded = Array(ids.prefix(cleanupSource + 1))
        // What the clean-up consumed: the source's images and archive, the received archive.
        let consumed = Set(recorded.filter { ["checkpoint", "archive", "transfer", "unpack"].contains(kind($0)) })
        let checkpoint = try #require(recorded.first { kind($0) == "checkpoint" })
        let world = FakeWorld(applied: Set(recorded).subtracting(consumed),
                              actFailures: [checkpoint: [FakeError(isRetryable: false, note: "no container to checkpoint")]])
        let report = await Executor(runner: world).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: Set(recorded))))
        #expect(report.succeeded, "\(report.outcomes)")
        #expect(report.rolledBack.isEmpty, "the rollback would remove the only running copy")
        #expect(!world.actLog.contains { consumed.contains($0) }, "\(world.actLog)")
        for id in consumed { #expect(report.outcomes[id] == .unchanged) }
        // The destination's verification (the gate that disarms the rollback) is checked again;
        // the digest of an archive the clean-up removed is not.
        #expect(world.actLog.contains(ids[verified]))
        #expect(!world.actLog.contains { kind($0) == "verifyDigest" })
    }

    /// Until the destination's verification has passed, completed steps are re-probed as before:
    /// a checkpoint whose images vanished is redone (the container still runs on the source).
    @Test func aResumeBeforeTheMoveWasVerifiedStillReprobesCompletedSteps() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let ids = graph.steps.map(\.id)
        let checkpoint = try #require(ids.first { graph.step($0)!.action.kind == "checkpoint" })
        let recorded = Array(ids.prefix(through: ids.firstIndex(of: checkpoint)!))
        let world = FakeWorld(applied: Set(recorded).subtracting([checkpoint]))
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: Set(recorded))))
        #expect(report.succeeded)
        #expect(world.acts(of: checkpoint) == 1)
        #expect(observer.events.contains(.resumedStepNotConfirmed(checkpoint)))
    }

    /// Several replicas in one archive: a step shared with a replica whose move is not yet
    /// verified is probed again even though another replica's move was.
    @Test func aStepSharedWithAMoveNotYetVerifiedIsStillProbed() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 2))
        let ids = graph.steps.map(\.id)
        let kind = { (id: StepID) in graph.step(id)!.action.kind }
        let firstVerified = try #require(ids.first { kind($0) == "verifyRunning" })
        let recorded = ids.filter { kind($0) != "verifyRunning" && !kind($0).hasPrefix("cleanup") }
            + [firstVerified]
        let world = FakeWorld(applied: Set(recorded))
        let report = await Executor(runner: world).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: Set(recorded))))
        #expect(report.succeeded)
        let transfer = try #require(ids.first { kind($0) == "transfer" })
        #expect(world.probeLog.contains(transfer), "shared with the replica not yet verified: probed again")
    }
}
