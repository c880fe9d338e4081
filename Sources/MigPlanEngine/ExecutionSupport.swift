import Foundation
import MigPlanBasics
import MigPlanGraph

/// Time as the executor sees it; injectable so tests assert backoff schedules without waiting.
public protocol ExecutorClock: Sendable {
    /// Time elapsed since some fixed origin.
    func now() -> Duration
    /// Sleeps; throws `CancellationError` when the calling task is cancelled.
    func sleep(for duration: Duration) async throws
}

/// The real clock (`ContinuousClock`).
public struct SystemExecutorClock: ExecutorClock {
    private let origin = ContinuousClock.now
    public init() {}
    public func now() -> Duration { ContinuousClock.now - origin }
    public func sleep(for duration: Duration) async throws { try await Task.sleep(for: duration) }
}

/// Uniform numbers in [0, 1) for backoff jitter; injectable for tests.
public protocol JitterSource: Sendable {
    func nextUnit() -> Double
}

/// `Double.random(in: 0..<1)` from the system generator.
public struct SystemJitterSource: JitterSource {
    public init() {}
    public func nextUnit() -> Double { Double.random(in: 0..<1) }
}

/// Asks a run to stop at the next safe point: no new step starts, steps in flight finish, armed
/// rollbacks run. Signal handlers (SIGINT/SIGTERM) call `request()`; cancelling the task that runs
/// the executor does the same.
public final class StopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var requested = false
    private var handlers: [@Sendable () -> Void] = []
    private var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var cancelledWaiters: Set<Int> = []
    private var nextWaiter = 0

    public init() {}

    public var isRequested: Bool { lock.withLock { requested } }

    public func request() {
        let (toCall, toResume): ([@Sendable () -> Void], [CheckedContinuation<Void, Never>]) = lock.withLock {
            guard !requested else { return ([], []) }
            requested = true
            defer {
                handlers = []
                waiters = [:]
            }
            return (handlers, Array(waiters.values))
        }
        for handler in toCall { handler() }
        for waiter in toResume { waiter.resume() }
    }

    /// Returns once a stop is requested, or when the calling task is cancelled.
    func waitForRequest() async {
        let id = lock.withLock {
            nextWaiter += 1
            return nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = lock.withLock {
                    if requested || cancelledWaiters.remove(id) != nil { return true }
                    waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter: CheckedContinuation<Void, Never>? = lock.withLock {
                if let waiter = waiters.removeValue(forKey: id) { return waiter }
                cancelledWaiters.insert(id)
                return nil
            }
            waiter?.resume()
        }
        lock.withLock { _ = cancelledWaiters.remove(id) }
    }

    /// Calls `handler` once when a stop is requested (at once if it already was).
    func onRequest(_ handler: @escaping @Sendable () -> Void) {
        let callNow: Bool = lock.withLock {
            if requested { return true }
            handlers.append(handler)
            return false
        }
        if callNow { handler() }
    }
}

/// An attempt that ran past the step's timeout. Retryable when the attempt stopped once cancelled;
/// when it did not (`abandoned`), its effect is unknown and it may still be running: not retried,
/// and the step counts as failed after acting (armed rollbacks run; their steps are guarded by probes).
public struct StepTimeoutError: Error, RetryClassifiable, CustomStringConvertible {
    public var step: StepID
    public var timeout: Duration
    /// The attempt did not stop within the grace period after being cancelled.
    public var abandoned: Bool

    public init(step: StepID, timeout: Duration, abandoned: Bool = false) {
        self.step = step
        self.timeout = timeout
        self.abandoned = abandoned
    }

    public var isRetryable: Bool { !abandoned }
    public var description: String {
        "step \(step) timed out after \(timeout)"
            + (abandoned ? " and did not stop when cancelled: its effect is unknown" : "")
    }
}

/// A previous run's state, for `--resume`: steps it completed (with their outputs) and rollback
/// groups it had started.
public struct ResumeState: Sendable, Hashable {
    public var completed: [StepID: [String: String]]
    public var triggeredRollbacks: Set<String>

    public init(completed: [StepID: [String: String]] = [:], triggeredRollbacks: Set<String> = []) {
        self.completed = completed
        self.triggeredRollbacks = triggeredRollbacks
    }

    public init(completedSteps: Set<StepID>) {
        self.init(completed: Dictionary(uniqueKeysWithValues: completedSteps.map { ($0, [:]) }))
    }
}

/// Settings of one run.
public struct ExecutionOptions: Sendable {
    public var runID: String
    /// Most steps in flight at once (>= 1).
    public var parallelism: Int
    /// Timeout of one attempt for steps whose graph entry has none (nil: unbounded).
    public var defaultTimeout: Duration?
    /// How long a timed-out attempt is given to stop once cancelled before it is abandoned.
    public var timeoutGrace: Duration
    /// The state of the run being resumed, or nil for a fresh run.
    public var resume: ResumeState?

    public init(runID: String = UUID().uuidString.lowercased(), parallelism: Int = 4,
                defaultTimeout: Duration? = nil, resume: ResumeState? = nil, timeoutGrace: Duration = .seconds(5)) {
        self.runID = runID
        self.parallelism = max(1, parallelism)
        self.defaultTimeout = defaultTimeout
        self.timeoutGrace = timeoutGrace
        self.resume = resume
    }
}
