import Foundation
import MigPlanActions
import MigPlanEngine
import MigPlanGraph

/// How `apply` shows a run: a live status line on a terminal, plain lines otherwise, a JSON event
/// stream (one object per line on stdout) with --format json, nothing but errors with --quiet.
actor ApplyProgress: ExecutionObserver {
    enum Mode { case terminal, lines, json, quiet }
    let mode: Mode
    private var total = 0
    private var done = 0
    private var statusShown = false
    private var transferStart: [StepID: ContinuousClock.Instant] = [:]
    private var rollbackSteps: Set<StepID> = []
    private let out = FileHandle.standardOutput
    private let err = FileHandle.standardError

    init(mode: Mode) { self.mode = mode }

    private func line(_ text: String) {
        if mode == .terminal && statusShown {
            err.write(Data("\r\u{1B}[K".utf8))
            statusShown = false
        }
        err.write(Data((text + "\n").utf8))
    }

    private func status(_ text: String) {
        guard mode == .terminal else { return }
        err.write(Data("\r\u{1B}[K\(text)".utf8))
        statusShown = true
    }

    private func stamp() -> String {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss"
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: Date())
    }

    func handle(_ event: ExecutionEvent) async {
        if mode == .json {
            emitJSON(event)
            return
        }
        switch event {
        case .runStarted(let runID, let plan, let steps, let resumed):
            total = steps
            if mode != .quiet { line("\(stamp()) run \(runID): plan \(plan), \(steps) steps" + (resumed > 0 ? " (\(resumed) done by the resumed run)" : "")) }
        case .stepStarted(let id, let role):
            if role == .rollback { rollbackSteps.insert(id) }
            if mode != .quiet { status("[\(done)/\(total)] \(id) ...") }
        case .attemptStarted:
            break
        case .attemptFailed(let id, let attempt, let message, _, let retryAfter):
            let retry = retryAfter.map { String(format: ", retrying in %.1f s", Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18) } ?? ""
            line("\(stamp()) \(id): attempt \(attempt) failed\(retry): \(message)")
        case .progress(let id, let bytes, let totalBytes):
            let now = ContinuousClock.now
            let start = transferStart[id] ?? now
            transferStart[id] = start
            let elapsed = seconds(now - start)
            let rate = elapsed > 0.05 ? String(format: " %.1f MB/s", Double(bytes) / elapsed / 1e6) : ""
            let of = totalBytes.map { String(format: " / %.1f MB", Double($0) / 1e6) } ?? ""
            status(String(format: "[\(done)/\(total)] \(id): %.1f MB", Double(bytes) / 1e6) + of + rate)
        case .resumedStepNotConfirmed(let id):
            line("\(stamp()) \(id): completed by the resumed run, but its effect is no longer seen; not re-done")
        case .stepFinished(let id, let outcome, let outputs, let duration):
            let counter: String
            if rollbackSteps.contains(id) {
                counter = "[rollback]"
            } else {
                done += 1
                counter = "[\(done)/\(total)]"
            }
            if case .failed = outcome {
                line("\(stamp()) \(id): \(outcome)")
            } else if mode != .quiet {
                var extra = ""
                if let b = outputs["bytes"], let s = outputs["seconds"], outputs["sha256"] != nil {
                    extra = " (\(b) bytes in \(s) s, sha256 \(outputs["sha256"]!.prefix(16))…)"
                }
                line(String(format: "\(stamp()) \(counter) \(id): \(outcome) %.3f s", seconds(duration)) + extra)
            }
        case .stopRequested:
            line("\(stamp()) stop requested: finishing the steps in flight, then rolling back what must be")
        case .rollbackStarted(let group, let reason):
            line("\(stamp()) rollback \(group): \(reason)")
        case .runFinished:
            if statusShown { err.write(Data("\r\u{1B}[K".utf8)); statusShown = false }
        }
    }

    private func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    private func emitJSON(_ event: ExecutionEvent) {
        var o: [String: Any] = ["time": ISO8601DateFormatter().string(from: Date())]
        switch event {
        case .runStarted(let runID, let plan, let steps, let resumed):
            o["event"] = "runStarted"; o["runID"] = runID; o["plan"] = plan; o["steps"] = steps; o["resumedSteps"] = resumed
        case .stepStarted(let id, let role):
            o["event"] = "stepStarted"; o["step"] = id; o["role"] = role.rawValue
        case .attemptStarted(let id, let attempt):
            o["event"] = "attemptStarted"; o["step"] = id; o["attempt"] = attempt
        case .attemptFailed(let id, let attempt, let message, let retryable, let retryAfter):
            o["event"] = "attemptFailed"; o["step"] = id; o["attempt"] = attempt; o["message"] = message; o["retryable"] = retryable
            if let r = retryAfter { o["retryAfterSeconds"] = seconds(r) }
        case .progress(let id, let bytes, let total):
            o["event"] = "progress"; o["step"] = id; o["bytes"] = bytes
            if let total { o["totalBytes"] = total }
        case .resumedStepNotConfirmed(let id):
            o["event"] = "resumedStepNotConfirmed"; o["step"] = id
        case .stepFinished(let id, let outcome, let outputs, let duration):
            o["event"] = "stepFinished"; o["step"] = id; o["outputs"] = outputs; o["seconds"] = seconds(duration)
            switch outcome {
            case .changed: o["outcome"] = "changed"
            case .unchanged: o["outcome"] = "unchanged"
            case .failed(let f): o["outcome"] = "failed"; o["message"] = f.message; o["attempts"] = f.attempts
            case .skipped(let c): o["outcome"] = "skipped"; o["message"] = c.description
            }
        case .stopRequested:
            o["event"] = "stopRequested"
        case .rollbackStarted(let group, let reason):
            o["event"] = "rollbackStarted"; o["group"] = group; o["reason"] = reason
        case .runFinished(let report):
            o["event"] = "runFinished"; o["succeeded"] = report.succeeded; o["changed"] = report.changedAnything
            o["rolledBack"] = report.rolledBack; o["stopped"] = report.stopped
        }
        Self.writeJSON(o, to: out)
    }

    static func writeJSON(_ o: [String: Any], to handle: FileHandle) {
        if let data = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes]) {
            handle.write(data + Data("\n".utf8))
        }
    }
}
