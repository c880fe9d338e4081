import Foundation
@testable import MigPlanActions
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import MigPlanModel
import Testing

/// The live runner's safety rules that need no lab: which files a probe may trust, when a
/// rollback may pass over an unreachable destination, what is redacted, how long commands may run.
@Suite struct RunnerSafetyTests {
    static func plan(passphraseEnv: String? = nil) throws -> Plan {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ap-safety-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let passphrase = passphraseEnv.map { "\n    passphraseEnv: \($0)" } ?? ""
        let text = """
            apiVersion: migplan/v1
            name: safety
            ssh:
              knownHosts: \(dir.path)/known_hosts
            keys:
              controller:
                path: \(dir.path)/key\(passphrase)
            hosts:
              a: {address: 127.0.0.1, key: controller}
              b: {address: 127.0.0.2, key: controller}
            containers:
              web:
                runtime: runc
                bundle: /var/lib/migplan/bundles/web
                stateful: true
            migrations:
              - name: move
                containers: [web]
                from: a
                to: b
                flow: stateful
            """
        let result = PlanLoader.load(contents: Array(text.utf8), file: "safety.yaml", directory: dir.path)
        return try #require(result.plan, "\(result.diagnostics)")
    }

    static func runner() throws -> LiveStepRunner {
        let plan = try plan()
        let graph = try PlanCompiler.compile(plan)
        return LiveStepRunner(plan: plan, graph: graph, sessions: SessionPool(plan: plan, environment: [:]))
    }

    static func forward(_ runner: LiveStepRunner, _ kind: String) throws -> Step {
        try #require(runner.graph.steps.first { $0.action.kind == kind })
    }

    static func rollbackCleanup(_ runner: LiveStepRunner) throws -> (Step, CleanupAction) {
        let step = try #require(runner.graph.rollbacks.flatMap(\.steps).first {
            if case .cleanupDestination = $0.action { return true } else { return false }
        })
        guard case .cleanupDestination(let a) = step.action else { throw ApplyLab.Failure(description: "not a cleanup") }
        return (step, a)
    }

    @Test func freshRunNeverTrustsAFileItDidNotWrite() throws {
        let runner = try Self.runner()
        for kind in ["archive", "transfer", "unpack"] {
            let step = try Self.forward(runner, kind)
            #expect(!runner.trustsFilesOf(StepContext(runID: "r", step: step, attempt: 1)), "\(kind): a leftover is not this run's")
            #expect(!runner.trustsFilesOf(StepContext(runID: "r", step: step, attempt: 2)), "\(kind): a retry that never acted")
            #expect(runner.trustsFilesOf(StepContext(runID: "r", step: step, attempt: 1, previouslyCompleted: true)))
            runner.noteActed(step.id)
            #expect(runner.trustsFilesOf(StepContext(runID: "r", step: step, attempt: 2)), "\(kind): retry after its own act")
        }
    }

    @Test func rollbackPassesAnUnreachableDestinationOnlyWhenNothingWasRestoredThere() throws {
        let runner = try Self.runner()
        let (step, cleanup) = try Self.rollbackCleanup(runner)
        let unreachable = ActionError(.transport, host: "b", "connection refused", retryable: true)
        let reason = runner.unreachableDestinationReason(step, cleanup, host: "b", error: unreachable)
        #expect(reason?.contains("b unreachable") == true)
        // Other failures stand.
        #expect(runner.unreachableDestinationReason(step, cleanup, host: "b",
                                                    error: ActionError(.commandFailed, host: "b", "rm failed")) == nil)
        // Once a restore acted there, the container may run there: never pass over it.
        runner.noteActed(try Self.forward(runner, "restore").id)
        #expect(runner.unreachableDestinationReason(step, cleanup, host: "b", error: unreachable) == nil)
    }

    @Test func resumedRunNeverPassesAnUnreachableDestination() throws {
        let runner = try Self.runner()
        runner.resumed = true
        let (step, cleanup) = try Self.rollbackCleanup(runner)
        #expect(runner.unreachableDestinationReason(step, cleanup, host: "b",
                                                    error: ActionError(.transport, host: "b", "refused")) == nil)
    }

    @Test func keyPassphraseAndJournalPasswordAreRedacted() throws {
        let plan = try Self.plan(passphraseEnv: "UNIT_KEY_PASSPHRASE")
        let secrets = ApplySession.secrets(of: plan, environment: ["UNIT_KEY_PASSPHRASE": "pass-phrase-42"],
                                           journalPassword: "journal-pw-7")
        #expect(Set(secrets) == ["pass-phrase-42", "journal-pw-7"])
    }

    @Test func journalObserverRedactsSecretsAndSaysWhenAnEffectIsUnknown() async throws {
        let runner = try Self.runner()
        let journal = MemoryJournal()
        let observer = JournalObserver(runID: "run-1", journal: journal, graph: runner.graph, recorder: CommandRecorder(),
                                       secrets: ["pass-phrase-42"])
        let step = try Self.forward(runner, "restore")
        await observer.handle(.stepStarted(step.id, role: .forward))
        let failure = StepFailure(message: "b: ssh said pass-phrase-42", retryable: false, attempts: 1, timedOut: true, effectUnknown: true)
        await observer.handle(.attemptFailed(step.id, attempt: 1, message: failure.message, retryable: false, retryAfter: nil))
        await observer.handle(.stepFinished(step.id, outcome: .failed(failure), outputs: [:], duration: .seconds(1)))
        await observer.handle(.rollbackStarted(group: "web.rollback", reason: "\(step.id) failed: \(failure)"))
        let text = await journal.everything
        #expect(!text.contains("pass-phrase-42"))
        #expect(text.contains("effect unknown"))
        #expect(await journal.auditActions.contains("step.effect-unknown"))
    }

    @Test func abandonedStepIsRememberedForTheRollback() async throws {
        let runner = try Self.runner()
        let step = try Self.forward(runner, "restore")
        let failure = StepFailure(message: "timed out", retryable: false, attempts: 1, timedOut: true, effectUnknown: true)
        await AbandonedStepObserver(runner: runner).handle(.stepFinished(step.id, outcome: .failed(failure), outputs: [:], duration: .zero))
        #expect(runner.stepsWithUnknownEffect == [step.id])
    }

    @Test func removalTakesTmpfsTargetsAndEmptyMigrationDirectoriesAndQuotesPaths() {
        let script = LiveStepRunner.removeScript([
            "/var/lib/migplan/checkpoints/move/web", "/var/lib/migplan/archives/move.d/web.tar.zz",
            "/var/lib/migplan/archives/move.tar.zz", "/var/lib/migplan/restore/it's/web"])
        #expect(script.contains("rm -rf /var/lib/migplan/checkpoints/move/web;"))
        #expect(script.contains("case \"$t\" in /dev/shm/migplan/*) rm -rf \"$t\""))
        #expect(script.contains("rmdir /var/lib/migplan/checkpoints/move 2>/dev/null || true"))
        #expect(script.contains("rmdir /var/lib/migplan/archives/move.d 2>/dev/null || true"))
        #expect(script.contains("rm -rf '/var/lib/migplan/restore/it'\\''s/web'"), "\(script)")
        // Never the work directory's own areas.
        #expect(!script.contains("rmdir /var/lib/migplan/archives "))
    }

    @Test func remoteCommandsEndBeforeTheirStepTimesOut() throws {
        let runner = try Self.runner()
        for step in runner.graph.allSteps {
            let budget = LiveStepRunner.commandBudget(for: step)
            #expect(budget >= .seconds(30))
            if let limit = step.timeoutSeconds {
                #expect(budget < .milliseconds(Int64(limit * 1000)), "\(step.id): command timeout \(budget) vs step \(limit) s")
            }
        }
    }
}

/// A journal in memory (what the observer would write).
actor MemoryJournal: JournalRecording {
    var lines: [String] = []
    var auditActions: [String] = []
    var everything: String { lines.joined(separator: "\n") }

    func beginRun(_ run: RunRecord) async throws { lines.append("run \(run.id)") }
    func recordStep(_ step: StepRecord) async throws { lines.append("step \(step.stepKey) \(step.status) \(step.detail ?? "")") }
    func recordAttempt(_ attempt: AttemptRecord) async throws {
        lines.append("attempt \(attempt.number) \(attempt.command ?? "") \(attempt.error ?? "") \(attempt.stderrTail ?? "")")
    }
    func recordMetric(_ metric: MetricRecord) async throws { lines.append("metric \(metric.container)") }
    func endRun(_ end: RunEnd) async throws { lines.append("end \(end.outcome) \(end.detail ?? "")") }
    func appendAudit(_ event: AuditEvent) async throws {
        auditActions.append(event.action)
        lines.append("audit \(event.action) \(event.subject) \(event.detail)")
    }
}
