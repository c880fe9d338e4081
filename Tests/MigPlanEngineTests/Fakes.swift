import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph

/// A scripted error: retryable or not.
struct FakeError: Error, RetryClassifiable, CustomStringConvertible {
    var isRetryable: Bool
    var note: String = "fake failure"
    var description: String { "\(note) (\(isRetryable ? "retryable" : "permanent"))" }
}

/// A world of effects: a step's effect is its id in `applied`. Probes look, acts apply, verifies
/// confirm. Failures, delays and concurrency are scripted and recorded.
final class FakeWorld: StepRunner, @unchecked Sendable {
    private let lock = NSLock()
    private var applied: Set<StepID>
    private var actFailures: [StepID: [FakeError]]
    private var verifyFailures: [StepID: [FakeError]]
    private let actDelay: Duration?
    private let delays: [StepID: Duration]
    private(set) var actLog: [StepID] = []
    private(set) var probeLog: [StepID] = []
    private(set) var startOrder: [StepID] = []
    private(set) var contexts: [StepID: StepContext] = [:]
    /// `begin ID` when an act starts, `end ID` when it returns or throws, in order.
    private(set) var timeline: [String] = []
    private var inFlight = 0
    private(set) var maxInFlight = 0

    init(applied: Set<StepID> = [], actFailures: [StepID: [FakeError]] = [:],
         verifyFailures: [StepID: [FakeError]] = [:], actDelay: Duration? = nil, delays: [StepID: Duration] = [:]) {
        self.applied = applied
        self.actFailures = actFailures
        self.verifyFailures = verifyFailures
        self.actDelay = actDelay
        self.delays = delays
    }

    var appliedEffects: Set<StepID> { lock.withLock { applied } }
    func acts(of id: StepID) -> Int { lock.withLock { actLog.filter { $0 == id }.count } }

    func probe(_ context: StepContext) async throws -> ProbeResult {
        let id = context.step.id
        let done: Bool = lock.withLock {
            probeLog.append(id)
            if context.attempt == 1 { startOrder.append(id) }
            contexts[id] = context
            return applied.contains(id)
        }
        return done ? .done(outputs: outputs(of: id)) : .needed
    }

    func act(_ context: StepContext) async throws -> [String: String] {
        let id = context.step.id
        let failure: FakeError? = lock.withLock {
            actLog.append(id)
            timeline.append("begin \(id)")
            inFlight += 1
            maxInFlight = max(maxInFlight, inFlight)
            if var queue = actFailures[id], !queue.isEmpty {
                let first = queue.removeFirst()
                actFailures[id] = queue
                return first
            }
            return nil
        }
        defer {
            lock.withLock {
                inFlight -= 1
                timeline.append("end \(id)")
            }
        }
        if let delay = delays[id] ?? actDelay { try await Task.sleep(for: delay) }
        if let failure { throw failure }
        await context.reportProgress(bytes: 42, total: 42)
        lock.withLock { _ = applied.insert(id) }
        return outputs(of: id)
    }

    func verify(_ context: StepContext, outputs: [String: String]) async throws {
        let failure: FakeError? = lock.withLock {
            if var queue = verifyFailures[context.step.id], !queue.isEmpty {
                let first = queue.removeFirst()
                verifyFailures[context.step.id] = queue
                return first
            }
            return nil
        }
        if let failure { throw failure }
    }

    private func outputs(of id: StepID) -> [String: String] {
        id.contains(".transfer@") ? ["sha256": "digest-of-\(id)"] : [:]
    }
}

/// Records every event.
final class RecordingObserver: ExecutionObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [ExecutionEvent] = []
    var events: [ExecutionEvent] { lock.withLock { recorded } }
    func handle(_ event: ExecutionEvent) async { lock.withLock { recorded.append(event) } }

    func attempts(of id: StepID) -> [Int] {
        events.compactMap { if case .attemptStarted(let step, let attempt) = $0, step == id { attempt } else { nil } }
    }

    func retryDelays(of id: StepID) -> [Duration?] {
        events.compactMap {
            if case .attemptFailed(let step, _, _, _, let delay) = $0, step == id { delay } else { nil }
        }
    }
}

/// A clock whose sleeps (backoffs) return at once and are recorded; time advances by what was slept.
/// Sleeps of 30 s or more (step timeouts the compiler sets) really wait, until cancelled, and are
/// not recorded: a fake clock must not make every step time out.
final class FakeClock: ExecutorClock, @unchecked Sendable {
    private let lock = NSLock()
    private var elapsed: Duration = .zero
    private var slept: [Duration] = []
    var sleeps: [Duration] { lock.withLock { slept } }
    func now() -> Duration { lock.withLock { elapsed } }
    func sleep(for duration: Duration) async throws {
        if duration >= .seconds(30) {
            try await Task.sleep(for: duration)
            return
        }
        lock.withLock {
            slept.append(duration)
            elapsed += duration
        }
    }
}

/// Jitter units from a fixed list (then 0).
final class ScriptedJitter: JitterSource, @unchecked Sendable {
    private let lock = NSLock()
    private var units: [Double]
    init(_ units: [Double]) { self.units = units }
    func nextUnit() -> Double { lock.withLock { units.isEmpty ? 0 : units.removeFirst() } }
}

enum Graphs {
    static func step(_ id: String, _ dependsOn: [String] = [], retry: StepRetryPolicy = .once,
                     timeout: Double? = nil) -> Step {
        Step(id: id, location: .controller, action: .ensureSessions(EnsureSessionsAction(hosts: [])),
             dependsOn: dependsOn, retry: retry, timeoutSeconds: timeout)
    }

    static func graph(_ steps: [Step], rollbacks: [RollbackGroup] = []) -> StepGraph {
        StepGraph(plan: "test", steps: steps, rollbacks: rollbacks)
    }
}
