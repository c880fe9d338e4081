import Foundation
@testable import MigPlanActions
import MigPlanGraph
import MigPlanModel
import Testing

/// How many SSH connections (lanes) the controller opens per host: one for a single container,
/// as many as the steps of one kind that share a host (at most the run's parallelism) for a
/// multi-user move, so that its restores do not queue behind one another on one connection.
@Suite struct SessionLaneTests {
    static func graph(replicas: Int) throws -> StepGraph {
        try ApplySessionTests.graph(flow: "stateful", replicas: replicas)
    }

    static func plan(replicas: Int) throws -> Plan {
        try PlanLoader.loadValid(file: try ApplySessionTests.writePlan(replicas: replicas))
    }

    @Test func aSingleContainerMoveUsesOneConnectionPerHost() throws {
        let lanes = SessionPool.lanes(for: try Self.graph(replicas: 1), parallelism: 4)
        #expect(lanes == ["a": 1, "b": 1])
    }

    @Test func aMultiUserMoveGetsAConnectionPerSessionUpToTheParallelism() throws {
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 3), parallelism: 4) == ["a": 3, "b": 3])
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 8), parallelism: 4) == ["a": 4, "b": 4])
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 8), parallelism: 2) == ["a": 2, "b": 2])
        #expect(SessionPool.lanes(for: try ApplySessionTests.graph(flow: "stateless", replicas: 3), parallelism: 4) == ["a": 3, "b": 3])
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 8), parallelism: 1) == ["a": 1, "b": 1])
    }

    @Test func anUnknownHostIsRefusedBeforeAnyConnection() async throws {
        let pool = SessionPool(plan: try Self.plan(replicas: 2), environment: [:], lanes: ["a": 2, "b": 2])
        #expect(await pool.laneCount("a") == 2)
        #expect(await pool.laneCount("nowhere") == 1)
        await #expect(throws: ActionError.self) { _ = try await pool.commandConnection("nowhere") }
        #expect(!(await pool.isOpen("a")))
    }
}
