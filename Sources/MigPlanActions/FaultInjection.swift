import Foundation
import MigPlanEngine
import MigPlanGraph

/// A testing aid: `MIGPLAN_FAULT_INJECT` makes `apply` kill its own process (SIGKILL, no clean-up,
/// no journal end) at a step boundary, to test `apply --resume` after a controller crash
/// (docs/resume.md). Without the variable nothing changes; it can only kill the process that
/// reads it.
///
///     kill-before:STEP_ID          right after the step's start is journaled, before its probe and act
///     kill-after:STEP_ID           right after the step's outcome is journaled
///     kill-during:STEP_ID:SECONDS  SECONDS after the step started (if the process still runs)
public struct FaultInjection: Sendable, Hashable, CustomStringConvertible {
    public enum Moment: String, Sendable, Hashable, CaseIterable {
        case before = "kill-before"
        case after = "kill-after"
        case during = "kill-during"
    }

    public static let environmentVariable = "MIGPLAN_FAULT_INJECT"

    public var moment: Moment
    public var step: StepID
    /// For `kill-during`: how long after the step's start.
    public var seconds: Double?

    public init(_ moment: Moment, step: StepID, seconds: Double? = nil) {
        self.moment = moment
        self.step = step
        self.seconds = seconds
    }

    public var description: String {
        "\(moment.rawValue):\(step)" + (seconds.map { ":\($0)" } ?? "")
    }

    /// Parses `kill-before:ID`, `kill-after:ID` or `kill-during:ID:SECONDS` (everything after the
    /// first `:` is the step id; for `kill-during`, SECONDS is the field after the last `:`).
    public static func parse(_ text: String) throws -> FaultInjection {
        let usage = "\(environmentVariable)=\(text): expected kill-before:STEP_ID, kill-after:STEP_ID or kill-during:STEP_ID:SECONDS"
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let colon = trimmed.firstIndex(of: ":"), let moment = Moment(rawValue: String(trimmed[..<colon])) else {
            throw ApplyError(.faultInjection, usage)
        }
        var rest = String(trimmed[trimmed.index(after: colon)...])
        var seconds: Double?
        if moment == .during {
            guard let last = rest.lastIndex(of: ":"), let s = Double(rest[rest.index(after: last)...]), s >= 0, s.isFinite else {
                throw ApplyError(.faultInjection, usage)
            }
            seconds = s
            rest = String(rest[..<last])
        }
        guard !rest.isEmpty else { throw ApplyError(.faultInjection, usage) }
        return FaultInjection(moment, step: rest, seconds: seconds)
    }

    /// The fault the environment asks for, checked against the graph (an unknown step id is an
    /// error before anything runs); nil when the variable is unset or empty.
    public static func from(environment: [String: String], graph: StepGraph) throws -> FaultInjection? {
        guard let text = environment[environmentVariable], !text.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
        let fault = try parse(text)
        guard graph.step(fault.step) != nil else {
            let known = graph.allSteps.map(\.id).joined(separator: ", ")
            throw ApplyError(.faultInjection, "\(environmentVariable)=\(text): no step \(fault.step) in plan \(graph.plan) (steps: \(known))")
        }
        return fault
    }
}

/// Kills the process at the fault's boundary. Placed after the journal observer in `apply`'s
/// fan-out, so what the journal records at that boundary is written before the kill.
public struct FaultInjectionObserver: ExecutionObserver {
    public let fault: FaultInjection
    let kill: @Sendable () -> Void

    /// `kill` defaults to SIGKILL of this process; tests pass their own.
    public init(_ fault: FaultInjection, kill: (@Sendable () -> Void)? = nil) {
        self.fault = fault
        self.kill = kill ?? FaultInjectionObserver.killSelf
    }

    @Sendable static func killSelf() {
        FileHandle.standardError.write(Data("migplan: \(FaultInjection.environmentVariable): SIGKILL\n".utf8))
        _ = Foundation.kill(getpid(), SIGKILL)
    }

    public func handle(_ event: ExecutionEvent) async {
        switch (fault.moment, event) {
        case (.before, .stepStarted(let id, _)) where id == fault.step:
            kill()
        case (.after, .stepFinished(let id, _, _, _)) where id == fault.step:
            kill()
        case (.during, .stepStarted(let id, _)) where id == fault.step:
            let kill = self.kill
            let delay = fault.seconds ?? 0
            // A thread of its own: the step's work (or a blocked pool) must not delay the kill.
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: delay)
                kill()
            }
        default:
            break
        }
    }
}
