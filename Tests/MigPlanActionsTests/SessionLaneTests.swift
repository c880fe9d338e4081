import Foundation
@testable import MigPlanActions
import MigPlanGraph
import MigPlanModel
import Testing

/// How many SSH connections (lanes) the controller opens per host: one for a single container,
/// as many as the steps of one kind that share a host (at most the run's parallelism) for a
/// multi-user move, so that its restores do not queue behind one another on one connection.
@Suite struct SessionLaneTests {
    static func graph(replicas: Int, archive: String = "single") throws -> StepGraph {
        try PlanCompiler.compile(try plan(replicas: replicas, archive: archive))
    }

    static func plan(replicas: Int, archive: String = "single") throws -> Plan {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ap-lanes-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let text = """
            apiVersion: migplan/v1
            name: lanes
            ssh:
              knownHosts: \(dir.path)/known_hosts
            keys:
              controller:
                path: \(dir.path)/key
            hosts:
              a: {address: 127.0.0.1, key: controller}
              b: {address: 127.0.0.2, key: controller}
            containers:
              face:
                runtime: runc
                bundle: /var/lib/migplan/bundles/face
                stateful: true
                replicas: \(replicas)
            migrations:
              - name: move
                containers: [face]
                from: a
                to: b
                flow: stateful
                transfer: {archive: \(archive)}
            """
        let result = PlanLoader.load(contents: Array(text.utf8), file: "lanes.yaml", directory: dir.path)
        return try #require(result.plan, "\(result.diagnostics)")
    }

    @Test func aSingleContainerMoveUsesOneConnectionPerHost() throws {
        let lanes = SessionPool.lanes(for: try Self.graph(replicas: 1), parallelism: 4)
        #expect(lanes == ["a": 1, "b": 1])
    }

    @Test func aMultiUserMoveGetsAConnectionPerSessionUpToTheParallelism() throws {
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 3), parallelism: 4) == ["a": 3, "b": 3])
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 8), parallelism: 4) == ["a": 4, "b": 4])
        #expect(SessionPool.lanes(for: try Self.graph(replicas: 8, archive: "per-container"), parallelism: 2) == ["a": 2, "b": 2])
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
