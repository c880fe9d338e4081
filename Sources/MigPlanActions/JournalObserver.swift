import Foundation
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal

/// Sends every event to several observers, in order.
public struct FanOutObserver: ExecutionObserver {
    public let observers: [any ExecutionObserver]
    public init(_ observers: [any ExecutionObserver]) { self.observers = observers }
    public func handle(_ event: ExecutionEvent) async {
        for o in observers { await o.handle(event) }
    }
}

/// Records a run in the journal as the executor reports it: every step (a row updated from
/// `running` to its outcome, with its outputs), every attempt with the commands it ran (secrets
/// redacted) and their exit statuses and output tails, an audit row per change and rollback, and
/// the paper's metrics per container at the end. Journal failures never stop the run (the
/// journal spools what it cannot write); they are counted and reported.
public actor JournalObserver: ExecutionObserver {
    public nonisolated let runID: String
    let journal: any JournalRecording
    let graph: StepGraph
    let recorder: CommandRecorder
    let secrets: [String]
    private var stepRecordIDs: [StepID: String] = [:]
    private var started: [StepID: Date] = [:]
    private var attemptStarted: [String: Date] = [:]
    private var lastAttempt: [StepID: Int] = [:]
    private var failedAttempts: Set<String> = []
    public private(set) var timings: [StepID: StepTiming] = [:]
    public private(set) var metrics: [ContainerMetrics] = []
    public private(set) var writeFailures: [String] = []

    public init(runID: String, journal: any JournalRecording, graph: StepGraph, recorder: CommandRecorder, secrets: [String] = []) {
        self.runID = runID
        self.journal = journal
        self.graph = graph
        self.recorder = recorder
        self.secrets = secrets
    }

    private func write(_ what: String, _ body: () async throws -> Void) async {
        do { try await body() } catch { writeFailures.append("\(what): \(error)") }
    }

    private func stepRecord(_ id: StepID, status: String, ended: Date?, detail: String?) -> StepRecord {
        let step = graph.step(id)
        let recordID = stepRecordIDs[id] ?? newJournalID()
        stepRecordIDs[id] = recordID
        var host: String?
        if case .host(let h)? = step?.location { host = h } else if step != nil { host = "controller" }
        let containers = step?.action.instancesConcerned.map(\.name) ?? []
        return StepRecord(id: recordID, runID: runID, stepKey: id, kind: step?.action.kind ?? "unknown", host: host,
                          container: containers.isEmpty ? nil : containers.joined(separator: ","),
                          status: status, startedAt: started[id], endedAt: ended, detail: detail)
    }

    private func writeAttempt(_ id: StepID, _ number: Int, error: String?) async {
        let key = CommandRecorder.key(id, number)
        guard failedAttempts.insert(key).inserted else { return }
        let commands = recorder.take(step: id, attempt: number)
        let startedAt = attemptStarted[key] ?? Date()
        let duration = Date().timeIntervalSince(startedAt)
        let redact = { (s: String) in JournalRedaction.redact(s, secrets: self.secrets) }
        let commandText = commands.isEmpty ? nil
            : commands.map { "[\($0.host)] \($0.command)" + ($0.exitStatus.map { " => exit \($0)" } ?? ($0.error.map { " => \($0)" } ?? "")) }
                .joined(separator: "\n")
        let last = commands.last
        if stepRecordIDs[id] == nil { _ = stepRecord(id, status: "running", ended: nil, detail: nil) }
        let record = AttemptRecord(
            runID: runID, stepID: stepRecordIDs[id]!, number: number, host: last?.host,
            command: commandText.map(redact), exitStatus: last?.exitStatus,
            stdoutTail: last.map { redact($0.stdoutTail) }, stderrTail: last.map { redact($0.stderrTail) },
            startedAt: startedAt, durationSeconds: duration, error: error.map(redact))
        await write("attempt \(id)#\(number)") { try await journal.recordAttempt(record) }
    }

    public func handle(_ event: ExecutionEvent) async {
        switch event {
        case .runStarted(_, let plan, let steps, let resumed):
            await write("audit") {
                try await journal.appendAudit(AuditEvent(runID: runID, action: "run.start", subject: plan,
                                                         detail: "\(steps) steps, \(resumed) completed by the resumed run"))
            }
        case .stepStarted(let id, _):
            started[id] = Date()
            let record = stepRecord(id, status: "running", ended: nil, detail: nil)
            await write("step \(id)") { try await journal.recordStep(record) }
        case .attemptStarted(let id, let attempt):
            attemptStarted[CommandRecorder.key(id, attempt)] = Date()
            lastAttempt[id] = attempt
        case .attemptFailed(let id, let attempt, let message, _, _):
            await writeAttempt(id, attempt, error: message)
        case .progress, .resumedStepNotConfirmed:
            break
        case .stepFinished(let id, let outcome, let outputs, _):
            let ended = Date()
            if started[id] == nil { started[id] = ended }
            if let attempt = lastAttempt[id] {
                await writeAttempt(id, attempt, error: nil)
            }
            let status: String
            let detail: String?
            switch outcome {
            case .changed: status = "changed"; detail = Self.json(outputs)
            case .unchanged: status = "unchanged"; detail = Self.json(outputs)
            case .failed(let f): status = "failed"; detail = Self.failureDetail(f, step: graph.step(id))
            case .skipped(let cause): status = "skipped"; detail = cause.description
            }
            timings[id] = StepTiming(started: started[id]!, ended: ended, outcome: status, outputs: outputs)
            let record = stepRecord(id, status: status, ended: ended, detail: detail.map { JournalRedaction.redact($0, secrets: secrets) })
            await write("step \(id)") { try await journal.recordStep(record) }
            if case .failed(let f) = outcome, f.effectUnknown {
                await write("audit") {
                    try await journal.appendAudit(AuditEvent(
                        runID: runID, action: "step.effect-unknown", subject: id,
                        detail: JournalRedaction.redact(detail ?? "", secrets: secrets)))
                }
            }
            if status == "changed" || status == "failed" {
                let step = graph.step(id)
                await write("audit") {
                    try await journal.appendAudit(AuditEvent(
                        runID: runID, action: "step.\(status)", subject: id,
                        detail: JournalRedaction.redact(
                            (step?.action.summary ?? "") + (status == "failed" ? " — \(detail ?? "")" : ""), secrets: secrets)))
                }
            }
        case .stopRequested:
            await write("audit") { try await journal.appendAudit(AuditEvent(runID: runID, action: "run.stop-requested", subject: runID)) }
        case .rollbackStarted(let group, let reason):
            await write("audit") {
                try await journal.appendAudit(AuditEvent(runID: runID, action: "rollback.start", subject: group,
                                                         detail: JournalRedaction.redact(reason, secrets: secrets)))
            }
        case .runFinished:
            metrics = MetricsCalculator.compute(graph: graph, timings: timings)
            for m in metrics {
                let record = MetricRecord(
                    runID: runID, container: m.container == "*" ? "\(m.migration):*" : m.container, flow: m.flow,
                    metrics: m.paperMetrics)
                await write("metrics \(m.container)") { try await journal.recordMetric(record) }
            }
        }
    }

    /// A failed step's journal detail: the failure, and when it timed out whether its effect is
    /// known (an abandoned command may still be running on the host).
    static func failureDetail(_ f: StepFailure, step: Step?) -> String {
        var text = f.description
        var host = "the host"
        if case .host(let h)? = step?.location { host = h }
        if f.effectUnknown {
            text += " [timed out; effect unknown: its command may still be running on \(host); rollback steps there wait for it]"
        } else if f.timedOut {
            text += " [timed out]"
        }
        return text
    }

    static func json(_ outputs: [String: String]) -> String? {
        guard !outputs.isEmpty else { return nil }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(outputs)).map { String(decoding: $0, as: UTF8.self) }
    }
}
