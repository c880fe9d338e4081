import MigPlanGraph

/// Why a step did not run.
public enum SkipCause: Sendable, Hashable, CustomStringConvertible {
    /// A step it depends on (directly or not) failed: that step's id.
    case dependencyFailed(StepID)
    /// The run was asked to stop before the step could start.
    case stopRequested
    /// A previous run (being resumed) rolled this step's migration back.
    case rolledBack(group: String)
    /// Its dependencies can never all succeed (a graph that was not validated: a cycle, a
    /// dependency on a missing step).
    case unreachable

    public var description: String {
        switch self {
        case .dependencyFailed(let id): return "dependency \(id) failed"
        case .stopRequested: return "the run was stopped"
        case .rolledBack(let group): return "rollback \(group) already started in the resumed run"
        case .unreachable: return "its dependencies can never complete"
        }
    }
}

/// Why a step failed, as recorded (never containing secrets: errors are described by their own
/// `description`, which the layers keep free of them).
public struct StepFailure: Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var retryable: Bool
    public var attempts: Int
    public var timedOut: Bool
    /// The last attempt timed out and did not stop when cancelled: what it did is unknown.
    public var effectUnknown: Bool

    public init(message: String, retryable: Bool, attempts: Int, timedOut: Bool = false, effectUnknown: Bool = false) {
        self.message = message
        self.retryable = retryable
        self.attempts = attempts
        self.timedOut = timedOut
        self.effectUnknown = effectUnknown
    }

    public var description: String {
        "\(message) (after \(attempts) attempt\(attempts == 1 ? "" : "s"))"
    }
}

/// How a step ended.
public enum StepOutcome: Sendable, Hashable, CustomStringConvertible {
    /// The probe found the effect already in place (or a resumed run had completed it).
    case unchanged
    /// The act ran and its effect was verified.
    case changed
    case failed(StepFailure)
    case skipped(SkipCause)

    /// Changed or unchanged.
    public var succeeded: Bool {
        switch self {
        case .unchanged, .changed: return true
        case .failed, .skipped: return false
        }
    }

    public var description: String {
        switch self {
        case .unchanged: return "unchanged"
        case .changed: return "changed"
        case .failed(let failure): return "failed: \(failure)"
        case .skipped(let cause): return "skipped: \(cause)"
        }
    }
}

/// What the executor reports, in order per step, to journals and progress displays.
public enum ExecutionEvent: Sendable, Hashable {
    case runStarted(runID: String, plan: String, steps: Int, resumedSteps: Int)
    case stepStarted(StepID, role: StepRole)
    case attemptStarted(StepID, attempt: Int)
    /// An attempt failed; `retryAfter` is the backoff before the next attempt, nil if none follows.
    case attemptFailed(StepID, attempt: Int, message: String, retryable: Bool, retryAfter: Duration?)
    case progress(StepID, bytes: Int64, total: Int64?)
    /// A step a resumed run had completed, whose probe no longer sees its effect: redone when it is
    /// idempotent by probe, else it fails.
    case resumedStepNotConfirmed(StepID)
    case stepFinished(StepID, outcome: StepOutcome, outputs: [String: String], duration: Duration)
    case stopRequested
    case rollbackStarted(group: String, reason: String)
    case runFinished(ExecutionReport)
}

/// Receives events. Called concurrently from several steps: implementations synchronise themselves.
public protocol ExecutionObserver: Sendable {
    func handle(_ event: ExecutionEvent) async
}

/// Ignores every event.
public struct NullExecutionObserver: ExecutionObserver {
    public init() {}
    public func handle(_ event: ExecutionEvent) async {}
}

/// The result of a run.
public struct ExecutionReport: Sendable, Hashable {
    /// Outcome of every step that was started or skipped (rollback steps only when triggered).
    public var outcomes: [StepID: StepOutcome]
    /// Step ids in the order they finished.
    public var finishOrder: [StepID]
    /// Rollback groups that were triggered, in order.
    public var rolledBack: [String]
    /// Whether a stop was requested during the run.
    public var stopped: Bool
    /// Outputs of every succeeded step.
    public var outputs: [StepID: [String: String]]

    public init(outcomes: [StepID: StepOutcome] = [:], finishOrder: [StepID] = [], rolledBack: [String] = [],
                stopped: Bool = false, outputs: [StepID: [String: String]] = [:]) {
        self.outcomes = outcomes
        self.finishOrder = finishOrder
        self.rolledBack = rolledBack
        self.stopped = stopped
        self.outputs = outputs
    }

    /// True when every forward step succeeded and nothing was rolled back or stopped.
    public var succeeded: Bool {
        !stopped && rolledBack.isEmpty && outcomes.values.allSatisfy(\.succeeded)
    }

    /// True when some step changed something.
    public var changedAnything: Bool { outcomes.values.contains(.changed) }

    /// Steps that succeeded (changed or unchanged): what a resumed run may re-probe instead of redo.
    public var completedSteps: Set<StepID> { Set(outcomes.filter { $0.value.succeeded }.keys) }

    /// What `--resume` of this run starts from: completed steps with their outputs, and the
    /// rollback groups this run had started.
    public var resumeState: ResumeState {
        ResumeState(completed: Dictionary(uniqueKeysWithValues: completedSteps.map { ($0, outputs[$0] ?? [:]) }),
                    triggeredRollbacks: Set(rolledBack))
    }
}
