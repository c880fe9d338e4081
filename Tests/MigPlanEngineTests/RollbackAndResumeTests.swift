import Foundation
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

@Suite("Executor rollback, stop and resume")
struct RollbackAndResumeTests {
    @Test func aRestoreFailureAfterTheCheckpointRestoresTheContainerOnTheSource() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let world = FakeWorld(actFailures: ["app.restore@instance2": [FakeError(isRetryable: false, note: "criu restore failed")]])
        let report = await Executor(runner: world).run(graph)
        #expect(report.rolledBack == ["app.rollback"])
        #expect(!report.succeeded)
        #expect(report.outcomes["app.verifyRunning@instance2"] == .skipped(.dependencyFailed("app.restore@instance2")))
        #expect(report.outcomes["app.cleanupSource@instance1"] == .skipped(.dependencyFailed("app.restore@instance2")))
        let rollback = ["app.cleanupDestination@instance2", "app.restoreOnSource@instance1", "app.verifyRunning@instance1"]
        for id in rollback { #expect(report.outcomes[id] == .changed) }
        let positions = rollback.map { world.actLog.firstIndex(of: $0)! }
        #expect(positions == positions.sorted())
        #expect(world.actLog.firstIndex(of: "app.restore@instance2")! < positions[0])
        // The source's images were never removed.
        #expect(!world.actLog.contains("app.cleanupSource@instance1"))
    }

    @Test func aFailureBeforeTheCheckpointRollsNothingBack() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let world = FakeWorld(actFailures: ["move.preflight@instance2": [FakeError(isRetryable: false)]])
        let report = await Executor(runner: world).run(graph)
        #expect(report.rolledBack.isEmpty)
        #expect(report.outcomes["app.checkpoint@instance1"] == .skipped(.dependencyFailed("move.preflight@instance2")))
        #expect(!world.actLog.contains { $0.contains("restoreOnSource") })
    }

    @Test func aLateFailureInOneReplicaRollsBackOnlyTheReplicasNotVerified() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 3))
        let world = FakeWorld(actFailures: ["app-2.restore@instance2": [FakeError(isRetryable: false)]])
        let report = await Executor(runner: world, clock: FakeClock()).run(graph, options: ExecutionOptions(parallelism: 2))
        #expect(report.rolledBack == ["app-2.rollback"])
        #expect(report.outcomes["app-1.cleanupSource@instance1"] == .changed)
        #expect(report.outcomes["app-2.restoreOnSource@instance1"] == .changed)
        #expect(report.outcomes["move.cleanupArchive@instance1"] == .skipped(.dependencyFailed("app-2.restore@instance2")))
    }

    @Test func stopFirstStatelessRestartsOnTheSourceWhenTheDestinationFails() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1, flow: .stateless(order: .stopFirst)))
        let world = FakeWorld(actFailures: ["app.start@instance2": [FakeError(isRetryable: false)]])
        let report = await Executor(runner: world).run(graph)
        #expect(report.rolledBack == ["app.rollback"])
        #expect(report.outcomes["app.start@instance1"] == .changed)
    }

    @Test func aStopLetsTheStepInFlightFinishThenRollsBackAndStartsNothingNew() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let stop = StopSignal()
        let world = StoppingWorld(stopAt: "move.transfer@controller", stop: stop)
        let report = await Executor(runner: world).run(graph, stop: stop)
        #expect(report.stopped)
        #expect(report.outcomes["move.transfer@controller"] == .changed)
        #expect(report.outcomes["move.verifyDigest@instance2"] == .skipped(.stopRequested))
        #expect(report.rolledBack == ["app.rollback"])
        #expect(report.outcomes["app.restoreOnSource@instance1"] == .changed)
        #expect(!world.inner.actLog.contains("move.verifyDigest@instance2"))
    }

    @Test func aStopDuringABackoffEndsTheWaitAndTheRun() async throws {
        let policy = StepRetryPolicy(attempts: 5, initialBackoffMilliseconds: 60_000, maxBackoffMilliseconds: 60_000)
        let graph = Graphs.graph([Graphs.step("flaky", retry: policy), Graphs.step("next", ["flaky"])])
        let world = FakeWorld(actFailures: ["flaky": [FakeError(isRetryable: true)]])
        let stop = StopSignal()
        let started = ContinuousClock.now
        let task = Task { await Executor(runner: world).run(graph, stop: stop) }
        try await waitUntil { world.acts(of: "flaky") == 1 }
        try await Task.sleep(for: .milliseconds(20))
        stop.request()
        let report = await task.value
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(report.stopped)
        guard case .failed(let failure) = report.outcomes["flaky"] else { Issue.record("not failed"); return }
        #expect(failure.attempts == 1)
        #expect(report.outcomes["next"] == .skipped(.dependencyFailed("flaky")))
        #expect(!world.actLog.contains("next"))
    }

    @Test func cancellingTheRunningTaskActsAsAStop() async throws {
        let graph = Graphs.graph([Graphs.step("a"), Graphs.step("b", ["a"])])
        let world = FakeWorld(delays: ["a": .milliseconds(200)])
        let task = Task { await Executor(runner: world).run(graph) }
        try await waitUntil { world.acts(of: "a") == 1 }
        task.cancel()
        let report = await task.value
        #expect(report.stopped)
        #expect(report.outcomes["a"] == .changed)  // finished, not torn down
        #expect(report.outcomes["b"] == .skipped(.stopRequested))
    }

    /// A crash (SIGKILL of the controller) can happen at every step boundary, and just after a
    /// step's effect landed but before it was recorded. Resuming must complete the plan with every
    /// effect applied exactly once.
    @Test(arguments: [false, true])
    func resumeAfterACrashAtEveryStepBoundaryCompletesWithoutRedoingAnything(effectLandedUnrecorded: Bool) async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 2))
        let order = graph.steps.map(\.id)
        for boundary in 0...order.count {
            let recorded = Array(order.prefix(boundary))
            var landed = Set(recorded)
            if effectLandedUnrecorded, boundary < order.count { landed.insert(order[boundary]) }
            let world = FakeWorld(applied: landed)
            let report = await Executor(runner: world).run(
                graph, options: ExecutionOptions(parallelism: 3, resume: ResumeState(completedSteps: Set(recorded))))
            #expect(report.succeeded, "boundary \(boundary)")
            #expect(report.rolledBack.isEmpty)
            #expect(world.appliedEffects == Set(order), "boundary \(boundary)")
            // Gates the previous run had passed are checked again (those inside a move it had
            // already verified on its destination excepted: ResumeAfterCrashTests); nothing else is redone.
            let gates = Set(recorded.filter { graph.step($0)!.reverifyOnResume })
            #expect(Set(world.actLog).subtracting(gates) == Set(order).subtracting(landed), "boundary \(boundary)")
            let destinationChecks = gates.filter { graph.step($0)!.action.kind == "verifyRunning" || graph.step($0)!.action.kind == "preflight" }
            #expect(destinationChecks.isSubset(of: Set(world.actLog)), "boundary \(boundary)")
            #expect(world.actLog.count == Set(world.actLog).count, "an act ran twice at boundary \(boundary)")
            for id in landed { #expect(report.outcomes[id] == .unchanged) }
        }
    }

    @Test func resumingFromAStoppedRunsReportFinishesItsRollbackWithoutRedoingIt() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let stop = StopSignal()
        let first = StoppingWorld(stopAt: "move.transfer@controller", stop: stop)
        let interrupted = await Executor(runner: first).run(graph, stop: stop)
        #expect(interrupted.rolledBack == ["app.rollback"])
        let state = interrupted.resumeState
        #expect(state.completed["move.transfer@controller"] == ["sha256": "digest-of-move.transfer@controller"])
        let world = FakeWorld(applied: first.inner.appliedEffects)
        let resumed = await Executor(runner: world).run(graph, options: ExecutionOptions(resume: state))
        // Only the gates the first run had passed are checked again; nothing is redone.
        #expect(Set(world.actLog) == ["move.preflight@instance1", "move.preflight@instance2", "app.verifyRunning@instance1"])
        #expect(resumed.rolledBack == ["app.rollback"])
        #expect(resumed.outcomes["app.restoreOnSource@instance1"] == .unchanged)
        #expect(resumed.outcomes["move.unpack@instance2"] == .skipped(.rolledBack(group: "app.rollback")))
    }

    @Test func aResumedStepWhoseEffectIsGoneIsReportedAndRedoneWhenIdempotentByProbe() async {
        let graph = Graphs.graph([Graphs.step("a"), Graphs.step("b", ["a"])])
        let world = FakeWorld()
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: ["a"])))
        #expect(report.outcomes["a"] == .changed)
        #expect(world.actLog == ["a", "b"])
        #expect(observer.events.contains(.resumedStepNotConfirmed("a")))
    }

    @Test func aResumedStepWhoseEffectIsGoneFailsWhenNotIdempotentByProbe() async {
        var once = Graphs.step("a")
        once.idempotentByProbe = false
        let graph = Graphs.graph([once, Graphs.step("b", ["a"])])
        let world = FakeWorld()
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: ["a"])))
        guard case .failed(let failure) = report.outcomes["a"] else { Issue.record("not failed"); return }
        #expect(!failure.retryable)
        #expect(report.outcomes["b"] == .skipped(.dependencyFailed("a")))
        #expect(world.actLog.isEmpty)
        #expect(observer.events.contains(.resumedStepNotConfirmed("a")))
    }

    @Test func resumingARunThatHadStartedRollingBackFinishesTheRollbackInsteadOfMovingOn() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        let done: Set<StepID> = ["move.preflight@instance1", "move.preflight@instance2", "move.sessions@controller",
                                 "app.checkpoint@instance1", "move.archive@instance1", "app.cleanupDestination@instance2"]
        let world = FakeWorld(applied: done)
        let report = await Executor(runner: world).run(graph, options: ExecutionOptions(
            resume: ResumeState(completed: Dictionary(uniqueKeysWithValues: done.map { ($0, [:]) }),
                                triggeredRollbacks: ["app.rollback"])))
        #expect(report.rolledBack == ["app.rollback"])
        #expect(report.outcomes["move.transfer@controller"] == .skipped(.rolledBack(group: "app.rollback")))
        #expect(Set(world.actLog) == ["move.preflight@instance1", "move.preflight@instance2", "app.removeArchive@instance1",
                                      "app.restoreOnSource@instance1", "app.verifyRunning@instance1"])
    }
}

/// Requests a stop while one named step is in flight.
final class StoppingWorld: StepRunner, @unchecked Sendable {
    let inner: FakeWorld
    let stopAt: StepID
    let stop: StopSignal
    init(stopAt: StepID, stop: StopSignal, inner: FakeWorld = FakeWorld()) {
        self.stopAt = stopAt
        self.stop = stop
        self.inner = inner
    }
    func probe(_ context: StepContext) async throws -> ProbeResult { try await inner.probe(context) }
    func act(_ context: StepContext) async throws -> [String: String] {
        if context.step.id == stopAt { stop.request() }
        return try await inner.act(context)
    }
    func verify(_ context: StepContext, outputs: [String: String]) async throws {
        try await inner.verify(context, outputs: outputs)
    }
}

/// Polls `condition` every few milliseconds, for at most 10 s.
func waitUntil(_ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw CancellationError() }
        try await Task.sleep(for: .milliseconds(5))
    }
}
