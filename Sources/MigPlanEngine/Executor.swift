import Foundation
import MigPlanBasics
import MigPlanGraph

/// Runs any step graph: dependencies first, independent steps concurrently (never more than
/// `parallelism` at once), each step probe → act → verify with retries for retryable errors,
/// failed steps skipping their dependents, and armed rollback groups run when the forward path
/// cannot complete. Knows nothing of SSH or PostgreSQL: the runner and the observer do.
public struct Executor: Sendable {
    public let runner: any StepRunner
    public let observer: any ExecutionObserver
    public let clock: any ExecutorClock
    public let jitter: any JitterSource

    public init(runner: any StepRunner, observer: any ExecutionObserver = NullExecutionObserver(),
                clock: any ExecutorClock = SystemExecutorClock(), jitter: any JitterSource = SystemJitterSource()) {
        self.runner = runner
        self.observer = observer
        self.clock = clock
        self.jitter = jitter
    }

    /// Runs `graph` to the end (or to a safe point after `stop` is requested or the calling task
    /// is cancelled: steps in flight finish, armed rollbacks run, nothing new starts).
    public func run(_ graph: StepGraph, options: ExecutionOptions = ExecutionOptions(),
                    stop: StopSignal = StopSignal()) async -> ExecutionReport {
        await withTaskCancellationHandler {
            await schedule(graph, options: options, stop: stop)
        } onCancel: {
            stop.request()
        }
    }

    private struct Finished: Sendable {
        var id: StepID
        var outcome: StepOutcome
        var outputs: [String: String]
    }

    private func schedule(_ graph: StepGraph, options: ExecutionOptions, stop: StopSignal) async -> ExecutionReport {
        var state = SchedulerState(graph: graph)
        let resume = options.resume ?? ResumeState()
        await observer.handle(.runStarted(
            runID: options.runID, plan: graph.plan, steps: graph.steps.count,
            resumedSteps: resume.completed.keys.filter { state.isForward($0) }.count))

        // A resumed run whose predecessor had started rolling back finishes the rollback.
        for group in graph.rollbacks where resume.triggeredRollbacks.contains(group.id) {
            let skipped = state.skipDescendants(of: group.armedBy, except: Set(resume.completed.keys),
                                                cause: .rolledBack(group: group.id))
            await announceSkipped(skipped)
            state.trigger(group)
            await observer.handle(.rollbackStarted(group: group.id, reason: "resumed run had started it"))
        }

        // Steps of a move the resumed run had already verified on its destination: not probed again.
        let settled = state.settledOnResume(Set(resume.completed.keys))

        var stopAnnounced = false
        await withTaskGroup(of: Finished.self) { tasks in
            var running = 0
            while true {
                if stop.isRequested && !stopAnnounced {
                    stopAnnounced = true
                    state.report.stopped = true
                    await observer.handle(.stopRequested)
                    await announceSkipped(state.skipPendingForward(cause: .stopRequested))
                    await triggerRollbacks(&state)
                }
                while running < options.parallelism, let step = state.popReady() {
                    running += 1
                    let completedBefore = resume.completed[step.id]
                    let isSettled = settled.contains(step.id)
                    let outputs = state.report.outputs
                    let timeout = step.timeoutSeconds.map { Duration.milliseconds(Int64(($0 * 1000).rounded())) }
                        ?? options.defaultTimeout
                    let grace = options.timeoutGrace
                    tasks.addTask {
                        // An unstructured task: cancelling the run must not cancel a step in flight.
                        await Task {
                            await self.execute(step, runID: options.runID, completedBefore: completedBefore,
                                               settled: isSettled, outputs: outputs, timeout: timeout, grace: grace,
                                               stop: stop)
                        }.value
                    }
                }
                if running == 0 { break }
                guard let finished = await tasks.next() else { break }
                running -= 1
                if finished.outcome.succeeded { state.report.outputs[finished.id] = finished.outputs }
                await announceSkipped(state.resolve(finished.id, finished.outcome))
                await triggerRollbacks(&state)
            }
        }
        // Anything still unresolved could not start: after a stop, or in a graph that was not
        // validated (a cycle, a missing dependency); never a hang.
        await announceSkipped(state.skipPendingForward(cause: state.report.stopped ? .stopRequested : .unreachable))
        let report = state.report
        await observer.handle(.runFinished(report))
        return report
    }

    private func announceSkipped(_ skipped: [(StepID, SkipCause)]) async {
        for (id, cause) in skipped {
            await observer.handle(.stepFinished(id, outcome: .skipped(cause), outputs: [:], duration: .zero))
        }
    }

    private func triggerRollbacks(_ state: inout SchedulerState) async {
        for (group, reason) in state.groupsToTrigger() {
            state.trigger(group)
            await observer.handle(.rollbackStarted(group: group.id, reason: reason))
        }
    }

    // MARK: One step

    private enum AttemptResult: Sendable {
        case probeDone([String: String])
        case acted([String: String])
        /// A gate a resumed run had passed, checked again and passed again.
        case rechecked([String: String])
        /// A resumed run had completed the step, its probe no longer finds the effect, and the
        /// step is not idempotent by probe: it is not redone.
        case notConfirmed
    }

    /// Set when an attempt reached `act`, so a later attempt whose probe finds the effect still
    /// reports `changed`, and a step not idempotent by probe is never acted twice.
    private final class ActMarker: @unchecked Sendable {
        private let lock = NSLock()
        private var started = false
        func mark() { lock.withLock { started = true } }
        var isMarked: Bool { lock.withLock { started } }
    }

    private func execute(_ step: Step, runID: String, completedBefore: [String: String]?, settled: Bool,
                         outputs: [StepID: [String: String]], timeout: Duration?, grace: Duration,
                         stop: StopSignal) async -> Finished {
        let started = clock.now()
        await observer.handle(.stepStarted(step.id, role: step.role))
        if settled, let completedBefore {
            // The resumed run had completed this step and verified the move past it: its effect
            // (checkpoint images, archives) may since have been consumed by the clean-ups, and
            // redoing it would act on a container that has moved (SchedulerState.settledOnResume).
            return await finish(step, .unchanged, completedBefore, since: started)
        }
        let policy = step.retry
        let acted = ActMarker()
        let runner = self.runner
        let observer = self.observer
        // A gate a resumed run had passed is checked again, never trusted (a destination that died
        // since must not let the source's checkpoint be deleted).
        let recheckGate = completedBefore != nil && step.reverifyOnResume
        var attempt = 1
        while true {
            await observer.handle(.attemptStarted(step.id, attempt: attempt))
            let context = StepContext(
                runID: runID, step: step, attempt: attempt, previouslyCompleted: completedBefore != nil,
                outputs: outputs,
                progressSink: { bytes, total in await observer.handle(.progress(step.id, bytes: bytes, total: total)) })
            do {
                let result: AttemptResult = try await withTimeout(timeout, grace: grace, step: step.id) {
                    if !recheckGate {
                        switch try await runner.probe(context) {
                        case .done(let found):
                            return .probeDone(found)
                        case .needed:
                            if context.previouslyCompleted && !acted.isMarked {
                                // Completed by the resumed run, effect gone: redo it only when a
                                // probe guards it against being applied twice.
                                await observer.handle(.resumedStepNotConfirmed(step.id))
                                if !step.idempotentByProbe { return .notConfirmed }
                            }
                        }
                    }
                    acted.mark()
                    let produced = try await runner.act(context)
                    try await runner.verify(context, outputs: produced)
                    return recheckGate ? .rechecked(produced) : .acted(produced)
                }
                let outcome: StepOutcome
                let produced: [String: String]
                switch result {
                case .probeDone(let found):
                    outcome = acted.isMarked ? .changed : .unchanged
                    produced = (completedBefore ?? [:]).merging(found) { _, new in new }
                case .acted(let made):
                    outcome = .changed
                    produced = made
                case .rechecked(let made):
                    outcome = .unchanged
                    produced = (completedBefore ?? [:]).merging(made) { _, new in new }
                case .notConfirmed:
                    let failure = StepFailure(
                        message: "a resumed run had completed \(step.id), but its effect is gone and the step is "
                            + "not idempotent by probe: not redone", retryable: false, attempts: attempt)
                    return await finish(step, .failed(failure), [:], since: started)
                }
                return await finish(step, outcome, produced, since: started)
            } catch {
                let retryable = (error as? any RetryClassifiable)?.isRetryable ?? false
                let message = String(describing: error)
                let mayRetry = retryable && attempt < policy.attempts && !stop.isRequested
                    && (step.idempotentByProbe || !acted.isMarked)
                if mayRetry {
                    let milliseconds = policy.delayMilliseconds(afterAttempt: attempt, unit: jitter.nextUnit())
                    let delay = Duration.microseconds(Int64((milliseconds * 1000).rounded()))
                    await observer.handle(.attemptFailed(step.id, attempt: attempt, message: message,
                                                         retryable: true, retryAfter: delay))
                    await backoff(delay, stop: stop)
                    if !stop.isRequested {
                        attempt += 1
                        continue
                    }
                } else {
                    await observer.handle(.attemptFailed(step.id, attempt: attempt, message: message,
                                                         retryable: retryable, retryAfter: nil))
                }
                let timeoutError = error as? StepTimeoutError
                let failure = StepFailure(message: message, retryable: retryable, attempts: attempt,
                                          timedOut: timeoutError != nil, effectUnknown: timeoutError?.abandoned ?? false)
                return await finish(step, .failed(failure), [:], since: started)
            }
        }
    }

    /// Sleeps `delay` on the executor's clock, returning early when a stop is requested.
    private func backoff(_ delay: Duration, stop: StopSignal) async {
        let clock = self.clock
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await clock.sleep(for: delay) }
            group.addTask { await stop.waitForRequest() }
            await group.next()
            group.cancelAll()
        }
    }

    private func finish(_ step: Step, _ outcome: StepOutcome, _ outputs: [String: String],
                        since started: Duration) async -> Finished {
        await observer.handle(.stepFinished(step.id, outcome: outcome, outputs: outputs, duration: clock.now() - started))
        return Finished(id: step.id, outcome: outcome, outputs: outputs)
    }

    /// Runs `body`, throwing `StepTimeoutError` if it takes longer than `timeout`. At the deadline
    /// the body is cancelled and given `grace` to stop; either way this returns then, never later
    /// (a body that ignores cancellation is abandoned: `StepTimeoutError.abandoned`, its effect
    /// unknown, not retried).
    private func withTimeout<T: Sendable>(
        _ timeout: Duration?, grace: Duration, step: StepID, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        guard let timeout else { return try await body() }
        let clock = self.clock
        let race = Latch<TimeoutRace<T>>()
        let bodyEnded = Latch<Bool>()
        let work = Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            race.set(.finished(result))
            bodyEnded.set(true)
        }
        let timer = Task {
            if (try? await clock.sleep(for: timeout)) != nil { race.set(.timedOut) }
        }
        let end = await race.wait()
        timer.cancel()
        switch end {
        case .finished(let result):
            return try result.get()
        case .timedOut:
            work.cancel()
            let graceTimer = Task {
                if (try? await clock.sleep(for: grace)) != nil { bodyEnded.set(false) }
            }
            let stopped = await bodyEnded.wait()
            graceTimer.cancel()
            throw StepTimeoutError(step: step, timeout: timeout, abandoned: !stopped)
        }
    }
}

/// How a timed attempt ended: its body finished (value or error), or the deadline came first.
private enum TimeoutRace<T: Sendable>: Sendable {
    case finished(Result<T, any Error>)
    case timedOut
}

/// A value set once (later sets are ignored) that any number of tasks can wait for.
private final class Latch<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T?
    private var waiters: [CheckedContinuation<T, Never>] = []

    func set(_ newValue: T) {
        let toResume: [CheckedContinuation<T, Never>] = lock.withLock {
            guard value == nil else { return [] }
            value = newValue
            defer { waiters = [] }
            return waiters
        }
        for waiter in toResume { waiter.resume(returning: newValue) }
    }

    func wait() async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let now: T? = lock.withLock {
                if let value { return value }
                waiters.append(continuation)
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}

/// Bookkeeping of one run: which steps wait for what, what is ready, what ended how.
struct SchedulerState {
    private var steps: [StepID: Step] = [:]
    private var rank: [StepID: Int] = [:]
    private var forward: Set<StepID> = []
    private var waitingOn: [StepID: Int] = [:]
    private var dependents: [StepID: [StepID]] = [:]
    private var ready: [StepID] = []
    private var started: Set<StepID> = []
    private var groups: [RollbackGroup]
    /// Per group: the forward steps from its `armedBy` to its `disarmedBy` steps (inclusive),
    /// plus those naming it in `onFailure`. The group never starts while one of them is in flight.
    private var windows: [String: Set<StepID>] = [:]
    private var triggered: Set<String> = []
    var report = ExecutionReport()

    init(graph: StepGraph) {
        groups = graph.rollbacks
        for (index, step) in graph.allSteps.enumerated() {
            steps[step.id] = step
            rank[step.id] = step.role == .rollback ? index - graph.allSteps.count : index
        }
        for step in graph.steps {
            forward.insert(step.id)
            register(step)
        }
        var prerequisites: [StepID: [StepID]] = [:]
        for step in graph.steps { prerequisites[step.id] = step.dependsOn }
        let following = dependents
        func closure(_ start: [StepID], _ next: [StepID: [StepID]]) -> Set<StepID> {
            var seen = Set(start)
            var queue = start
            while let current = queue.popLast() {
                for other in next[current] ?? [] where seen.insert(other).inserted { queue.append(other) }
            }
            return seen
        }
        for group in groups {
            var window = closure(group.armedBy, following).intersection(closure(group.disarmedBy, prerequisites))
            for step in graph.steps where step.onFailure.contains(group.id) { window.insert(step.id) }
            windows[group.id] = window.intersection(forward)
        }
    }

    func isForward(_ id: StepID) -> Bool { forward.contains(id) }

    /// Forward steps a resumed run takes as done without probing: those the resumed run had
    /// completed in the window of a rollback group it had disarmed (every `disarmedBy` step
    /// completed: the move was verified on its destination), other than the disarming steps
    /// themselves (gates, checked again), and in no window of a group still open. Once a move is
    /// verified, the clean-ups remove its checkpoint images and archives: re-probing would find
    /// them gone and redo the checkpoint of a container that now runs on the destination (and
    /// its failure would trigger a rollback that removes the only running copy).
    func settledOnResume(_ completed: Set<StepID>) -> Set<StepID> {
        var closed = Set<StepID>()
        var open = Set<StepID>()
        for group in groups {
            let window = windows[group.id] ?? []
            if !group.disarmedBy.isEmpty && group.disarmedBy.allSatisfy(completed.contains) {
                closed.formUnion(window.subtracting(group.disarmedBy))
            } else {
                open.formUnion(window)
            }
        }
        return closed.subtracting(open).intersection(completed)
    }

    private mutating func register(_ step: Step) {
        let dependencies = Set(step.dependsOn)
        waitingOn[step.id] = dependencies.count
        for dependency in dependencies { dependents[dependency, default: []].append(step.id) }
        if dependencies.isEmpty { ready.append(step.id) }
    }

    /// The ready step to start next: rollback steps first, then in graph order.
    mutating func popReady() -> Step? {
        guard let best = ready.min(by: { rank[$0]! < rank[$1]! }) else { return nil }
        ready.removeAll { $0 == best }
        started.insert(best)
        return steps[best]
    }

    /// Records how a step ended; returns the steps this skips (transitively), with their cause.
    mutating func resolve(_ id: StepID, _ outcome: StepOutcome) -> [(StepID, SkipCause)] {
        report.outcomes[id] = outcome
        report.finishOrder.append(id)
        if outcome.succeeded {
            for dependent in dependents[id] ?? [] where report.outcomes[dependent] == nil {
                waitingOn[dependent, default: 1] -= 1
                if waitingOn[dependent] == 0 && !started.contains(dependent) { ready.append(dependent) }
            }
            return []
        }
        let cause: SkipCause
        switch outcome {
        case .skipped(let inherited): cause = inherited
        default: cause = .dependencyFailed(id)
        }
        var skipped: [(StepID, SkipCause)] = []
        var queue = dependents[id] ?? []
        while !queue.isEmpty {
            let next = queue.removeFirst()
            guard report.outcomes[next] == nil, !started.contains(next) else { continue }
            report.outcomes[next] = .skipped(cause)
            report.finishOrder.append(next)
            ready.removeAll { $0 == next }
            skipped.append((next, cause))
            queue += dependents[next] ?? []
        }
        return skipped
    }

    /// Skips every forward step that has not started (after a stop request).
    mutating func skipPendingForward(cause: SkipCause) -> [(StepID, SkipCause)] {
        let pending = forward.filter { report.outcomes[$0] == nil && !started.contains($0) }
            .sorted { rank[$0]! < rank[$1]! }
        var skipped: [(StepID, SkipCause)] = []
        for id in pending {
            report.outcomes[id] = .skipped(cause)
            report.finishOrder.append(id)
            skipped.append((id, cause))
        }
        ready.removeAll { forward.contains($0) }
        return skipped
    }

    /// Skips forward steps that follow `roots` (not the roots), except those in `keep`.
    mutating func skipDescendants(of roots: [StepID], except keep: Set<StepID>, cause: SkipCause) -> [(StepID, SkipCause)] {
        var seen = Set<StepID>()
        var queue = roots.flatMap { dependents[$0] ?? [] }
        var skipped: [(StepID, SkipCause)] = []
        while !queue.isEmpty {
            let next = queue.removeFirst()
            guard seen.insert(next).inserted else { continue }
            queue += dependents[next] ?? []
            guard !keep.contains(next), report.outcomes[next] == nil else { continue }
            report.outcomes[next] = .skipped(cause)
            report.finishOrder.append(next)
            ready.removeAll { $0 == next }
            skipped.append((next, cause))
        }
        return skipped.sorted { rank[$0.0]! < rank[$1.0]! }
    }

    /// Groups that are armed (an `armedBy` step acted: it succeeded or failed), can no longer be
    /// disarmed (every `disarmedBy` step ended, not all of them successfully), and have no forward
    /// step of their window still in flight (a restore running on the destination must end before
    /// the source restores the same container). Checked again each time a step ends.
    func groupsToTrigger() -> [(RollbackGroup, String)] {
        var result: [(RollbackGroup, String)] = []
        for group in groups where !triggered.contains(group.id) {
            let armed = group.armedBy.contains {
                switch report.outcomes[$0] {
                case .changed?, .unchanged?, .failed?: return true
                case .skipped?, nil: return false
                }
            }
            let ended = group.disarmedBy.allSatisfy { report.outcomes[$0] != nil }
            let disarmed = group.disarmedBy.allSatisfy { report.outcomes[$0]?.succeeded == true }
            let inFlight = (windows[group.id] ?? []).contains { started.contains($0) && report.outcomes[$0] == nil }
            guard armed, ended, !disarmed, !inFlight else { continue }
            let blocker = group.disarmedBy.first { report.outcomes[$0]?.succeeded != true }!
            result.append((group, "\(blocker) \(report.outcomes[blocker]!)"))
        }
        return result
    }

    mutating func trigger(_ group: RollbackGroup) {
        guard triggered.insert(group.id).inserted else { return }
        report.rolledBack.append(group.id)
        for step in group.steps { register(step) }
    }
}
