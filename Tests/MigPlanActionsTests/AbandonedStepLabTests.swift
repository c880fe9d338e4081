import Foundation
@testable import MigPlanActions
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

extension ApplyLabSuites {
/// A step abandoned with its effect unknown (timed out, its command maybe still running): the
/// rollback on that host waits for the command to end before acting (over real SSH on the lab).
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct AbandonedStepLabTests {
    @Test func rollbackWaitsForTheAbandonedRestoreToEnd() async throws {
        try ApplyLab.requireLab()
        let name = "ap-settle"
        let file = try ApplyIntegrationTests.memhogPlan(name)
        let plan = try PlanLoader.loadValid(file: file)
        let graph = try PlanCompiler.compile(plan)
        let sessions = SessionPool(plan: plan, environment: try ApplyLab.applyEnvironment())
        defer { Task { await sessions.closeAll() } }
        let runner = LiveStepRunner(plan: plan, graph: graph, sessions: sessions)
        let restore = try #require(graph.steps.first { $0.id == "\(name).restore@instance2" })
        let cleanup = try #require(graph.rollbacks.flatMap(\.steps).first { $0.id == "\(name).cleanupDestination@instance2" })
        let restoreOnSource = try #require(graph.rollbacks.flatMap(\.steps).first { $0.id == "\(name).restoreOnSource@instance1" })

        // Nothing abandoned: no wait.
        var started = ContinuousClock.now
        try await runner.settleAbandonedCommands(before: cleanup)
        #expect(ContinuousClock.now - started < .seconds(2))

        // The restore was abandoned and "its" runc still runs on instance2 for 3 s.
        runner.noteEffectUnknown(restore.id)
        let spawn = try await runner.sh("instance2", "setsid -f bash -c \"exec -a 'runc restore \(name)' sleep 3\" >/dev/null 2>&1 </dev/null")
        #expect(spawn.succeeded)
        started = ContinuousClock.now
        try await runner.settleAbandonedCommands(before: cleanup)
        let waited = ContinuousClock.now - started
        #expect(waited >= .seconds(1.5), "waited \(waited)")
        #expect(waited < .seconds(30))
        // A rollback step on the other host does not wait for it.
        started = ContinuousClock.now
        try await runner.settleAbandonedCommands(before: restoreOnSource)
        #expect(ContinuousClock.now - started < .seconds(2))
    }
}
}  // extension ApplyLabSuites
