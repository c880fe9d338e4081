import MigPlanGraph

/// What a probe found: the step's effect is already there (with the outputs it would have
/// produced, e.g. a digest read back), or the act must run.
public enum ProbeResult: Sendable, Hashable {
    case needed
    case done(outputs: [String: String])

    public static let done = ProbeResult.done(outputs: [:])
}

/// Everything a runner gets about one attempt of one step.
public struct StepContext: Sendable {
    public let runID: String
    public let step: Step
    /// 1-based attempt number.
    public let attempt: Int
    /// True when a previous run (being resumed) completed this step. The executor then only
    /// probes it, except a gate (`step.reverifyOnResume`), which it acts again without probing;
    /// a non-gate whose probe says `.needed` is acted again only when `step.idempotentByProbe`.
    public let previouslyCompleted: Bool
    /// Outputs of every step completed so far in this run (e.g. the transfer step's `sha256`).
    public let outputs: [StepID: [String: String]]
    let progressSink: @Sendable (Int64, Int64?) async -> Void

    public init(
        runID: String, step: Step, attempt: Int, previouslyCompleted: Bool = false,
        outputs: [StepID: [String: String]] = [:],
        progressSink: @escaping @Sendable (Int64, Int64?) async -> Void = { _, _ in }
    ) {
        self.runID = runID
        self.step = step
        self.attempt = attempt
        self.previouslyCompleted = previouslyCompleted
        self.outputs = outputs
        self.progressSink = progressSink
    }

    /// Reports bytes moved so far (and the total when known); observers see `.progress` events.
    public func reportProgress(bytes: Int64, total: Int64? = nil) async {
        await progressSink(bytes, total)
    }
}

/// Runs the steps of a graph: the SSH + runtime layer implements it for real hosts, tests use fakes.
/// Every step is probe → act → verify; all three may throw (conform errors to `RetryClassifiable`
/// to have them retried).
public protocol StepRunner: Sendable {
    /// Whether the step's effect is already in place.
    func probe(_ context: StepContext) async throws -> ProbeResult
    /// Applies the step; returns its outputs (may be empty).
    func act(_ context: StepContext) async throws -> [String: String]
    /// Confirms the effect of `act` (given its outputs).
    func verify(_ context: StepContext, outputs: [String: String]) async throws
}
