import Foundation
import MigPlanActions
import MigPlanEngine
import MigPlanGraph
import Testing

/// The `MIGPLAN_FAULT_INJECT` testing aid (docs/resume.md), without the lab.
@Suite struct FaultInjectionTests {
    static let graph = StepGraph(plan: "p", steps: [
        Step(id: "m.checkpoint@a", location: .controller, action: .ensureSessions(EnsureSessionsAction(hosts: []))),
    ], rollbacks: [])

    @Test func theThreeFormsParse() throws {
        #expect(try FaultInjection.parse("kill-after:m.checkpoint@a") == FaultInjection(.after, step: "m.checkpoint@a"))
        #expect(try FaultInjection.parse("kill-before:m/x.archive@a") == FaultInjection(.before, step: "m/x.archive@a"))
        #expect(try FaultInjection.parse("kill-during:m.checkpoint@a:1.5") == FaultInjection(.during, step: "m.checkpoint@a", seconds: 1.5))
    }

    @Test(arguments: ["kill-after:", "kill:x", "kill-during:m.checkpoint@a", "kill-during:m.checkpoint@a:-1", "after:x"])
    func aMalformedValueIsRefusedSayingTheExpectedForms(_ text: String) {
        #expect(throws: ApplyError.self) { try FaultInjection.parse(text) }
        do { _ = try FaultInjection.parse(text) } catch {
            #expect(String(describing: error).contains("kill-before:STEP_ID"))
        }
    }

    @Test func anUnknownStepIsRefusedNamingTheStepsOfThePlan() {
        do {
            _ = try FaultInjection.from(environment: [FaultInjection.environmentVariable: "kill-after:nope"], graph: Self.graph)
            Issue.record("accepted")
        } catch {
            #expect(String(describing: error).contains("no step nope in plan p"))
            #expect(String(describing: error).contains("m.checkpoint@a"))
        }
    }

    @Test func withoutTheVariableNothingIsInjected() throws {
        #expect(try FaultInjection.from(environment: [:], graph: Self.graph) == nil)
        #expect(try FaultInjection.from(environment: [FaultInjection.environmentVariable: " "], graph: Self.graph) == nil)
    }

    @Test func theObserverKillsOnlyAtItsBoundary() async {
        final class Count: @unchecked Sendable {
            let lock = NSLock()
            var n = 0
            func hit() { lock.withLock { n += 1 } }
            var value: Int { lock.withLock { n } }
        }
        let before = Count(), after = Count()
        let b = FaultInjectionObserver(FaultInjection(.before, step: "s"), kill: { before.hit() })
        let a = FaultInjectionObserver(FaultInjection(.after, step: "s"), kill: { after.hit() })
        for o in [a, b] {
            await o.handle(.stepStarted("other", role: .forward))
            await o.handle(.stepFinished("other", outcome: .changed, outputs: [:], duration: .zero))
        }
        #expect(before.value == 0 && after.value == 0)
        for o in [a, b] { await o.handle(.stepStarted("s", role: .forward)) }
        #expect(before.value == 1 && after.value == 0)
        for o in [a, b] { await o.handle(.stepFinished("s", outcome: .changed, outputs: [:], duration: .zero)) }
        #expect(before.value == 1 && after.value == 1)
    }
}
