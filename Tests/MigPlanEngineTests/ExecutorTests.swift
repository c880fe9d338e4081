import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

@Suite("Executor")
struct ExecutorTests {
    @Test func stepsStartOnlyAfterTheirDependenciesSucceeded() async {
        let graph = Graphs.graph([
            Graphs.step("a"), Graphs.step("b", ["a"]), Graphs.step("c", ["a"]), Graphs.step("d", ["b", "c"]),
            Graphs.step("e", ["d"]),
        ])
        let world = FakeWorld(delays: ["b": .milliseconds(20)])
        let report = await Executor(runner: world).run(graph, options: ExecutionOptions(parallelism: 4))
        #expect(report.succeeded)
        let order = report.finishOrder
        for step in graph.steps {
            for dependency in step.dependsOn {
                #expect(order.firstIndex(of: dependency)! < order.firstIndex(of: step.id)!)
                #expect(world.startOrder.firstIndex(of: dependency)! < world.startOrder.firstIndex(of: step.id)!)
            }
        }
        #expect(report.outcomes.values.allSatisfy { $0 == .changed })
    }

    @Test func neverMoreThanParallelismStepsRunAtOnce() async {
        let graph = Graphs.graph((1...12).map { Graphs.step("s\($0)") })
        for parallelism in [1, 3] {
            let world = FakeWorld(actDelay: .milliseconds(30))
            let report = await Executor(runner: world).run(graph, options: ExecutionOptions(parallelism: parallelism))
            #expect(report.succeeded)
            #expect(world.maxInFlight == parallelism)
        }
    }

    @Test func retryableFailuresAreRetriedWithExponentialBackoffAndJitter() async {
        let policy = StepRetryPolicy(attempts: 5, initialBackoffMilliseconds: 100, maxBackoffMilliseconds: 250,
                                     multiplier: 2, jitter: 0.5)
        let graph = Graphs.graph([Graphs.step("flaky", retry: policy)])
        let world = FakeWorld(actFailures: ["flaky": Array(repeating: FakeError(isRetryable: true), count: 3)])
        let clock = FakeClock()
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer, clock: clock,
                                    jitter: ScriptedJitter([0, 0.5, 0.2])).run(graph)
        #expect(report.outcomes["flaky"] == .changed)
        #expect(world.acts(of: "flaky") == 4)
        #expect(observer.attempts(of: "flaky") == [1, 2, 3, 4])
        // 100 ms, then 200 ms less 25 %, then min(400, 250) ms less 10 %.
        let expected: [Duration] = [.milliseconds(100), .milliseconds(150), .milliseconds(225)]
        #expect(clock.sleeps == expected)
        #expect(observer.retryDelays(of: "flaky") == expected.map { Optional($0) })
    }

    @Test func retriesStopAfterThePolicysAttempts() async {
        let policy = StepRetryPolicy(attempts: 3, initialBackoffMilliseconds: 10, maxBackoffMilliseconds: 1000, jitter: 0)
        let graph = Graphs.graph([Graphs.step("down", retry: policy)])
        let world = FakeWorld(actFailures: ["down": Array(repeating: FakeError(isRetryable: true), count: 10)])
        let clock = FakeClock()
        let report = await Executor(runner: world, clock: clock).run(graph)
        guard case .failed(let failure) = report.outcomes["down"] else { Issue.record("not failed"); return }
        #expect(failure.attempts == 3)
        #expect(failure.retryable)
        #expect(world.acts(of: "down") == 3)
        #expect(clock.sleeps == [.milliseconds(10), .milliseconds(20)])
    }

    @Test func nonRetryableErrorsFailAtOnce() async {
        let policy = StepRetryPolicy(attempts: 5, initialBackoffMilliseconds: 10, maxBackoffMilliseconds: 100)
        let graph = Graphs.graph([Graphs.step("hostkey", retry: policy)])
        let world = FakeWorld(actFailures: ["hostkey": [FakeError(isRetryable: false, note: "changed host key")]])
        let clock = FakeClock()
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer, clock: clock).run(graph)
        #expect(report.outcomes["hostkey"] == .failed(StepFailure(
            message: "changed host key (permanent)", retryable: false, attempts: 1)))
        #expect(world.acts(of: "hostkey") == 1)
        #expect(clock.sleeps.isEmpty)
        #expect(observer.retryDelays(of: "hostkey") == [nil])
    }

    @Test func errorsThatDoNotClassifyThemselvesAreNotRetried() async {
        struct Plain: Error {}
        struct Runner: StepRunner {
            func probe(_ context: StepContext) async throws -> ProbeResult { .needed }
            func act(_ context: StepContext) async throws -> [String: String] { throw Plain() }
            func verify(_ context: StepContext, outputs: [String: String]) async throws {}
        }
        let policy = StepRetryPolicy(attempts: 4, initialBackoffMilliseconds: 1, maxBackoffMilliseconds: 1)
        let clock = FakeClock()
        let report = await Executor(runner: Runner(), clock: clock).run(Graphs.graph([Graphs.step("x", retry: policy)]))
        guard case .failed(let failure) = report.outcomes["x"] else { Issue.record("not failed"); return }
        #expect(failure.attempts == 1)
        #expect(clock.sleeps.isEmpty)
    }

    @Test func aFailedVerifyIsRetriedAndAProbeThatThenFindsTheEffectCountsAsChanged() async {
        let policy = StepRetryPolicy(attempts: 2, initialBackoffMilliseconds: 1, maxBackoffMilliseconds: 1)
        let world = FakeWorld(verifyFailures: ["v": [FakeError(isRetryable: true)]])
        let report = await Executor(runner: world, clock: FakeClock()).run(Graphs.graph([Graphs.step("v", retry: policy)]))
        #expect(report.outcomes["v"] == .changed)
        #expect(world.acts(of: "v") == 1)
    }

    @Test func probeThatFindsTheEffectSkipsTheActAndRecordsUnchanged() async {
        let graph = Graphs.graph([Graphs.step("a"), Graphs.step("b", ["a"])])
        let world = FakeWorld(applied: ["a"])
        let report = await Executor(runner: world).run(graph)
        #expect(report.outcomes == ["a": .unchanged, "b": .changed])
        #expect(world.actLog == ["b"])
        #expect(report.changedAnything)
    }

    @Test func aFailedStepSkipsItsDependentsWithTheCauseAndIndependentStepsStillRun() async {
        let graph = Graphs.graph([
            Graphs.step("a"), Graphs.step("b", ["a"]), Graphs.step("c", ["b"]), Graphs.step("d", ["c"]),
            Graphs.step("other"),
        ])
        let world = FakeWorld(actFailures: ["b": [FakeError(isRetryable: false)]])
        let observer = RecordingObserver()
        let report = await Executor(runner: world, observer: observer).run(graph)
        #expect(report.outcomes["c"] == .skipped(.dependencyFailed("b")))
        #expect(report.outcomes["d"] == .skipped(.dependencyFailed("b")))
        #expect(report.outcomes["other"] == .changed)
        #expect(!report.succeeded)
        #expect(!world.actLog.contains("c"))
        #expect(observer.events.contains(.stepFinished("d", outcome: .skipped(.dependencyFailed("b")), outputs: [:], duration: .zero)))
    }

    @Test func outputsOfEarlierStepsReachLaterSteps() async throws {
        let plan = EnginePlans.stateful(replicas: 1)
        let graph = try PlanCompiler.compile(plan)
        let world = FakeWorld()
        let report = await Executor(runner: world).run(graph)
        #expect(report.succeeded)
        let context = try #require(world.contexts["move.verifyDigest@instance2"])
        #expect(context.outputs["move.transfer@controller"] == ["sha256": "digest-of-move.transfer@controller"])
    }

    @Test func anAttemptPastItsTimeoutFailsAsRetryableTimeout() async {
        let policy = StepRetryPolicy(attempts: 2, initialBackoffMilliseconds: 0, maxBackoffMilliseconds: 0)
        let graph = Graphs.graph([Graphs.step("slow", retry: policy, timeout: 0.05)])
        let world = FakeWorld(delays: ["slow": .seconds(30)])
        let started = ContinuousClock.now
        let report = await Executor(runner: world).run(graph)
        #expect(ContinuousClock.now - started < .seconds(10))
        guard case .failed(let failure) = report.outcomes["slow"] else { Issue.record("not failed"); return }
        #expect(failure.timedOut)
        #expect(failure.attempts == 2)
    }

    @Test func anUnvalidatedGraphWithACycleEndsWithItsStepsUnreachableInsteadOfHanging() async {
        let graph = Graphs.graph([Graphs.step("a"), Graphs.step("b", ["c"]), Graphs.step("c", ["b"]),
                                  Graphs.step("d", ["ghost"])])
        let report = await Executor(runner: FakeWorld()).run(graph)
        #expect(report.outcomes == ["a": .changed, "b": .skipped(.unreachable), "c": .skipped(.unreachable),
                                    "d": .skipped(.unreachable)])
    }

    @Test func progressReportsReachTheObserver() async {
        let observer = RecordingObserver()
        _ = await Executor(runner: FakeWorld(), observer: observer).run(Graphs.graph([Graphs.step("t")]))
        #expect(observer.events.contains(.progress("t", bytes: 42, total: 42)))
        guard case .runStarted = observer.events.first, case .runFinished = observer.events.last else {
            Issue.record("run events missing"); return
        }
    }
}

/// Plans compiled by the real compiler, for tests of rollback and resume on realistic graphs.
enum EnginePlans {
    static let marks = FieldMarks(node: Mark(file: "t.yaml", line: 1, column: 1))

    static func stateful(replicas: Int, flow: Flow = .stateful) -> Plan {
        let migration = Migration(
            name: "move", containers: ["app"], from: "instance1", to: "instance2", flow: flow,
            transfer: TransferOptions(marks: marks),
            retry: RetryPolicy(attempts: 1, marks: marks), marks: marks)
        return Plan(
            file: "t.yaml", directory: "/tmp", name: "t", ssh: SSHSettings(knownHosts: "/k", marks: marks),
            keys: [Key(name: "k", path: "/k", marks: marks)],
            hosts: [Host(name: "instance1", address: "10.77.0.11", key: "k", marks: marks),
                    Host(name: "instance2", address: "10.77.0.12", key: "k", marks: marks)],
            journal: nil,
            containers: [Container(name: "app", source: .runcBundle(path: "/b"), stateful: flow.isStateful,
                                   replicas: replicas, marks: marks)],
            migrations: [migration], marks: marks)
    }
}
