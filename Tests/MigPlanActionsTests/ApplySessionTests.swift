import Foundation
import MigPlanActions
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import Testing

/// `apply`'s behaviour that needs no lab: refusing to run without its journal, the paper's
/// metrics computed from step timings.
@Suite struct ApplySessionTests {
    static func writePlan(journalPort: Int = 1, flow: String = "stateful", replicas: Int = 1) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ap-unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let order = flow == "stateless" ? "\n    order: stop-first" : ""
        let text = """
            apiVersion: migplan/v1
            name: unit
            ssh:
              knownHosts: \(dir.path)/known_hosts
            keys:
              controller:
                path: \(dir.path)/key
            hosts:
              a: {address: 127.0.0.1, key: controller}
              b: {address: 127.0.0.2, key: controller}
            journal:
              host: 127.0.0.1
              port: \(journalPort)
              dbname: migplan
              user: migplan
              sslmode: verify-full
              sslrootcert: \(dir.path)/ca.crt
              passwordEnv: UNIT_JOURNAL_PASSWORD
            containers:
              web:
                runtime: runc
                bundle: /var/lib/migplan/bundles/web
                stateful: \(flow == "stateful")
                replicas: \(replicas)
            migrations:
              - name: move
                containers: [web]
                from: a
                to: b
                flow: \(flow)\(order)
            """
        let file = dir.appendingPathComponent("unit.yaml")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }

    @Test func applyRefusesToRunWhenTheJournalIsUnreachable() async throws {
        var options = ApplyOptions()
        options.environment = ["UNIT_JOURNAL_PASSWORD": "not-a-real-one"]
        do {
            _ = try await ApplySession.apply(planFile: try Self.writePlan(), options: options)
            Issue.record("apply ran without a journal")
        } catch let e as ApplyError {
            #expect(e.kind == .journalUnreachable)
            #expect(e.description.contains("unreachable"))
            #expect(!e.description.contains("not-a-real-one"), "the password never appears in messages")
        }
    }

    @Test func applyRefusesToRunWithoutTheJournalPassword() async throws {
        var options = ApplyOptions()
        options.environment = [:]
        do {
            _ = try await ApplySession.apply(planFile: try Self.writePlan(), options: options)
            Issue.record("apply ran without the journal password")
        } catch let e as ApplyError {
            #expect(e.kind == .journalUnreachable)
            #expect(e.description.contains("UNIT_JOURNAL_PASSWORD"))
        }
    }

    @Test func invalidPlanIsAnApplyError() async throws {
        do {
            _ = try await ApplySession.apply(planFile: "/nonexistent/plan.yaml")
            Issue.record("apply accepted a missing plan")
        } catch let e as ApplyError {
            #expect(e.kind == .invalidPlan)
        }
    }

    static func graph(flow: String, replicas: Int = 1) throws -> StepGraph {
        let plan = try PlanLoader.loadValid(file: try writePlan(flow: flow, replicas: replicas))
        return try PlanCompiler.compile(plan)
    }

    /// Timings where each step starts when its dependencies end and lasts `durations[kind]`.
    static func timings(_ graph: StepGraph, _ durations: [String: Double], outputs: [String: [String: String]] = [:]) -> [StepID: StepTiming] {
        let origin = Date(timeIntervalSince1970: 1_000_000)
        var end: [StepID: Date] = [:]
        var result: [StepID: StepTiming] = [:]
        for step in graph.steps {
            let start = step.dependsOn.compactMap { end[$0] }.max() ?? origin
            let finish = start.addingTimeInterval(durations[step.action.kind] ?? 0.1)
            end[step.id] = finish
            result[step.id] = StepTiming(started: start, ended: finish, outcome: "changed", outputs: outputs[step.action.kind] ?? [:])
        }
        return result
    }

    @Test func statefulMetricsFollowThePaper() throws {
        let g = try Self.graph(flow: "stateful")
        let t = Self.timings(g, ["preflight": 0.5, "ensureSessions": 0.1, "checkpoint": 1, "archive": 2, "transfer": 4,
                                 "verifyDigest": 0.5, "unpack": 1, "restore": 1.5, "verifyRunning": 0.5, "cleanupSource": 0.2],
                             outputs: ["transfer": ["bytes": "40000000", "seconds": "4"]])
        let rows = MetricsCalculator.compute(graph: g, timings: t)
        let m = try #require(rows.first)
        #expect(rows.count == 1)
        #expect(m.container == "web" && m.flow == "stateful")
        #expect(abs((m.checkpointDuration ?? 0) - 1) < 1e-6)
        #expect(abs((m.fileTransferDuration ?? 0) - 4) < 1e-6)
        #expect(m.transferSizeBytes == 40_000_000)
        #expect(m.uploadSpeedBytesPerSecond == 10_000_000)
        #expect(abs((m.resumeDuration ?? 0) - 1.5) < 1e-6)
        // downtime: checkpoint start → restore end = 1 + 2 + 4 + 0.5 + 1 + 1.5
        #expect(abs((m.downtime ?? 0) - 10) < 1e-6)
        // total: sessions start → verifyRunning end = 0.1 + 10 + 0.5
        #expect(abs((m.totalMigrationTime ?? 0) - 10.6) < 1e-6)
    }

    @Test func multiUserMovesGetAWholeMoveRow() throws {
        let g = try Self.graph(flow: "stateful", replicas: 3)
        let rows = MetricsCalculator.compute(graph: g, timings: Self.timings(g, [:], outputs: ["transfer": ["bytes": "300"]]))
        #expect(rows.map(\.container) == ["web-1", "web-2", "web-3", "*"])
        #expect(rows.last?.transferSizeBytes == 300)
    }

    @Test func statelessMetricsHaveKillStartAndDowntime() throws {
        let g = try Self.graph(flow: "stateless")
        let rows = MetricsCalculator.compute(graph: g, timings: Self.timings(g, ["kill": 0.3, "start": 0.4, "verifyRunning": 0.2]))
        let m = try #require(rows.first)
        #expect(m.flow == "stateless")
        #expect(abs((m.killDuration ?? 0) - 0.3) < 1e-6 && abs((m.startDuration ?? 0) - 0.4) < 1e-6)
        #expect(abs((m.downtime ?? 0) - 0.7) < 1e-6)
    }

    @Test func movesThatDidNotCompleteHaveNoMetrics() throws {
        let g = try Self.graph(flow: "stateful")
        var t = Self.timings(g, [:])
        for (id, timing) in t where id.hasSuffix("verifyRunning@b") {
            t[id] = StepTiming(started: timing.started, ended: timing.ended, outcome: "failed", outputs: [:])
        }
        #expect(MetricsCalculator.compute(graph: g, timings: t).isEmpty)
    }
}
