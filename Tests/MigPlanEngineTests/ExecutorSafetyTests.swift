import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

/// Rollback timing and arming, gates on resume, and timeouts that a step cannot outlive.
@Suite("Executor safety: rollback windows, arming, gates, timeouts")
struct ExecutorSafetyTests {
    @Test func aRollbackNeverStartsWhileAForwardStepOfTheSameContainerIsInFlight() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 2))
        let stop = StopSignal()
        // The stop arrives while app-2's restore on the destination runs (and takes a while);
        // app-1's restore ends first, so the executor handles the stop with app-2's still in flight.
        let world = StoppingWorld(stopAt: "app-2.restore@instance2", stop: stop,
                                  inner: FakeWorld(delays: ["app-2.restore@instance2": .milliseconds(300)]))
        let report = await Executor(runner: world).run(graph, stop: stop)
        #expect(report.stopped)
        #expect(report.outcomes["app-2.restore@instance2"] == .changed)
        #expect(report.outcomes["app-2.verifyRunning@instance2"] == .skipped(.stopRequested))
        #expect(Set(report.rolledBack) == ["app-1.rollback", "app-2.rollback"])
        let timeline = world.inner.timeline
        let restoreEnded = try #require(timeline.firstIndex(of: "end app-2.restore@instance2"))
        for id in ["app-2.cleanupDestination@instance2", "app-2.removeArchive@instance1", "app-2.restoreOnSource@instance1"] {
            let began = try #require(timeline.firstIndex(of: "begin \(id)"), "\(id) did not run")
            #expect(restoreEnded < began, "\(id) began while the destination's restore was in flight")
        }
    }

    @Test func aCheckpointThatActedThenFailedArmsTheRollback() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        // CRIU dumped (the container stopped) and then failed: the container must come back.
        let world = FakeWorld(actFailures: ["app.checkpoint@instance1": [FakeError(isRetryable: false, note: "criu dump failed late")]])
        let report = await Executor(runner: world).run(graph)
        guard case .failed = report.outcomes["app.checkpoint@instance1"] else { Issue.record("not failed"); return }
        #expect(report.rolledBack == ["app.rollback"])
        #expect(report.outcomes["app.restoreOnSource@instance1"] == .changed)
        #expect(report.outcomes["app.verifyRunning@instance1"] == .changed)
    }

    @Test func aKillThatActedThenFailedArmsTheRollback() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1, flow: .stateless(order: .stopFirst)))
        let world = FakeWorld(actFailures: ["app.kill@instance1": [FakeError(isRetryable: false)]])
        let report = await Executor(runner: world).run(graph)
        #expect(report.rolledBack == ["app.rollback"])
        #expect(report.outcomes["app.start@instance1"] == .changed)
    }

    @Test func aResumedRunChecksGatesAgainAndKeepsTheSourceWhenTheDestinationDied() async throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        // The previous run got as far as verifying the destination; then the destination died.
        let order = graph.steps.map(\.id)
        let recorded = Array(order.prefix(through: order.firstIndex(of: "app.verifyRunning@instance2")!))
        let world = FakeWorld(applied: Set(recorded), actFailures: [
            "app.verifyRunning@instance2": [FakeError(isRetryable: false, note: "app is not running on instance2")],
        ])
        let report = await Executor(runner: world).run(
            graph, options: ExecutionOptions(resume: ResumeState(completedSteps: Set(recorded))))
        guard case .failed = report.outcomes["app.verifyRunning@instance2"] else {
            Issue.record("the destination was not verified again: \(String(describing: report.outcomes["app.verifyRunning@instance2"]))")
            return
        }
        #expect(!world.actLog.contains("app.cleanupSource@instance1"))
        #expect(report.outcomes["app.cleanupSource@instance1"] == .skipped(.dependencyFailed("app.verifyRunning@instance2")))
        #expect(report.rolledBack == ["app.rollback"])
        for gate in ["move.preflight@instance1", "move.preflight@instance2"] {
            #expect(world.acts(of: gate) == 1, "\(gate) not checked again")
            #expect(report.outcomes[gate] == .unchanged)
        }
        // Inside a move the previous run had verified, the digest of an archive the clean-ups
        // may have removed is not checked again (ResumeAfterCrashTests); the destination is.
        #expect(report.outcomes["move.verifyDigest@instance2"] == .unchanged)
        // Non-gates the previous run completed are only probed.
        #expect(world.acts(of: "app.checkpoint@instance1") == 0)
    }

    @Test func aTimeoutReturnsAtTheDeadlineEvenIfTheStepIgnoresCancellationAndArmsTheRollback() async {
        let policy = StepRetryPolicy(attempts: 3, initialBackoffMilliseconds: 0, maxBackoffMilliseconds: 0)
        var stuck = Graphs.step("stuck", retry: policy, timeout: 0.1)
        stuck.idempotentByProbe = true
        let graph = Graphs.graph(
            [stuck, Graphs.step("verify", ["stuck"])],
            rollbacks: [RollbackGroup(id: "undo", migration: "", armedBy: ["stuck"], disarmedBy: ["verify"],
                                      steps: [Step(id: "undo.step", location: .controller,
                                                   action: .ensureSessions(EnsureSessionsAction(hosts: [])),
                                                   role: .rollback)])])
        let runner = DeafRunner(hang: "stuck", for: .seconds(3))
        let started = ContinuousClock.now
        let report = await Executor(runner: runner).run(graph, options: ExecutionOptions(timeoutGrace: .milliseconds(100)))
        #expect(ContinuousClock.now - started < .seconds(2), "the executor waited for a step that ignores cancellation")
        guard case .failed(let failure) = report.outcomes["stuck"] else { Issue.record("not failed"); return }
        #expect(failure.timedOut)
        #expect(failure.effectUnknown)
        #expect(failure.attempts == 1, "an abandoned attempt may still run: it is never retried")
        #expect(report.outcomes["verify"] == .skipped(.dependencyFailed("stuck")))
        #expect(report.rolledBack == ["undo"])
        #expect(report.outcomes["undo.step"] == .changed)
    }

    @Test func compiledStepsCarryTimeoutsThatTheExecutorApplies() throws {
        let graph = try PlanCompiler.compile(EnginePlans.stateful(replicas: 1))
        for step in graph.allSteps { #expect(step.timeoutSeconds == step.action.defaultTimeoutSeconds, "\(step.id)") }
    }
}

/// Acts by waiting on a timer that cancellation does not end (as a blocking C call would).
struct DeafRunner: StepRunner {
    let hang: StepID
    let duration: Duration

    init(hang: StepID, for duration: Duration) {
        self.hang = hang
        self.duration = duration
    }

    func probe(_ context: StepContext) async throws -> ProbeResult { .needed }

    func act(_ context: StepContext) async throws -> [String: String] {
        if context.step.id == hang {
            let nanoseconds = duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) { continuation.resume() }
            }
        }
        return [:]
    }

    func verify(_ context: StepContext, outputs: [String: String]) async throws {}
}
