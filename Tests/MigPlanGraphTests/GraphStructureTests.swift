import Foundation
import MigPlanGraph
import Testing

@Suite("Step graph structure")
struct GraphStructureTests {
    func step(_ id: String, _ dependsOn: [String] = []) -> Step {
        Step(id: id, location: .controller,
             action: .ensureSessions(EnsureSessionsAction(hosts: [])), dependsOn: dependsOn)
    }

    @Test func cycleIsReportedWithItsStepsInOrder() {
        let graph = StepGraph(plan: "p", steps: [step("a", ["c"]), step("b", ["a"]), step("c", ["b"])])
        #expect(throws: GraphError.cycle(["a", "b", "c", "a"])) { try graph.validated() }
        #expect(GraphError.cycle(["a", "b", "c", "a"]).description == "step graph has a cycle: a -> b -> c -> a")
    }

    @Test func cycleBehindAcyclicStepsIsStillFound() {
        let graph = StepGraph(plan: "p", steps: [
            step("start"), step("x", ["start", "z"]), step("y", ["x"]), step("z", ["y"]), step("after", ["z"]),
        ])
        #expect(throws: GraphError.cycle(["x", "y", "z", "x"])) { try graph.validated() }
    }

    @Test func selfDependencyIsACycle() {
        let graph = StepGraph(plan: "p", steps: [step("a", ["a"])])
        #expect(throws: GraphError.cycle(["a", "a"])) { try graph.validated() }
    }

    @Test func danglingDependencyNamesBothSteps() {
        let graph = StepGraph(plan: "p", steps: [step("a"), step("b", ["ghost"])])
        #expect(throws: GraphError.danglingDependency(step: "b", missing: "ghost")) { try graph.validated() }
    }

    @Test func forwardStepDependingOnARollbackStepIsUnreachable() {
        var undo = step("undo")
        undo.role = .rollback
        let graph = StepGraph(plan: "p", steps: [step("a"), step("b", ["undo"])], rollbacks: [
            RollbackGroup(id: "g", migration: "", armedBy: ["a"], disarmedBy: ["a"], steps: [undo]),
        ])
        #expect(throws: GraphError.unreachable(
            step: "b", reason: "depends on rollback step undo, which runs only on failure")) { try graph.validated() }
    }

    @Test func duplicateIdsAreRefused() {
        let graph = StepGraph(plan: "p", steps: [step("a"), step("a")])
        #expect(throws: GraphError.duplicateStep("a")) { try graph.validated() }
    }

    @Test func topologicalOrderKeepsListedOrderAmongReadySteps() throws {
        let graph = StepGraph(plan: "p", steps: [step("d", ["b", "c"]), step("c", ["a"]), step("b", ["a"]), step("a")])
        #expect(try graph.validated().steps.map(\.id) == ["a", "c", "b", "d"])
    }

    @Test func jsonRoundTripsEveryActionKind() throws {
        let instance = ContainerInstance(name: "face-1", container: "face", runtime: "runc", replica: 1)
        let actions: [StepAction] = [
            .preflight(PreflightAction(runtimes: ["runc"], criuCheck: true, workDir: "/w")),
            .ensureSessions(EnsureSessionsAction(hosts: ["a", "b"])),
            .checkpoint(CheckpointAction(instance: instance, imagesDir: "/w/c")),
            .archive(ArchiveAction(instances: [instance], imagesDirs: ["/w/c"], archivePath: "/w/a.tar.zz", compression: .zlib(level: 6))),
            .transfer(TransferAction(from: "a", to: "b", route: .relay, sourcePath: "/s", destinationPath: "/d")),
            .verifyDigest(VerifyDigestAction(archivePath: "/d", digestFrom: "x")),
            .unpack(UnpackAction(archivePath: "/d", intoDir: "/r", compression: .none)),
            .restore(RestoreAction(instance: instance, imagesDir: "/r")),
            .verifyRunning(VerifyRunningAction(instance: instance, checkState: true)),
            .cleanupSource(CleanupAction(instances: [instance], paths: ["/w/c"])),
            .stop(InstanceAction(instance: instance)),
            .kill(InstanceAction(instance: instance)),
            .start(InstanceAction(instance: instance)),
            .cleanupDestination(CleanupAction(instances: [instance], paths: [])),
            .restoreOnSource(RestoreAction(instance: instance, imagesDir: "/w/c")),
        ]
        let steps = actions.enumerated().map { index, action in
            Step(id: "s\(index)", location: index.isMultiple(of: 2) ? .controller : .host("h"), action: action,
                 metrics: [.total], retry: StepRetryPolicy(attempts: 3, initialBackoffMilliseconds: 10, maxBackoffMilliseconds: 100),
                 timeoutSeconds: index == 0 ? 1.5 : nil)
        }
        let graph = StepGraph(plan: "p", planFile: "p.yaml", steps: steps)
        let decoded = try StepGraph.decodeJSON(Data(graph.jsonRendering().utf8))
        #expect(decoded == graph)
        #expect(graph.jsonRendering().contains("\"formatVersion\" : 1"))
        #expect(graph.jsonRendering().contains("\"kind\" : \"restoreOnSource\""))
    }

    @Test func jsonWithoutTheGateFlagDecodesWithTheActionsDefault() throws {
        let graph = StepGraph(plan: "p", steps: [
            Step(id: "g", location: .host("h"), action: .verifyDigest(VerifyDigestAction(archivePath: "/d", digestFrom: "x"))),
            Step(id: "n", location: .host("h"), action: .kill(InstanceAction(
                instance: ContainerInstance(name: "c", container: "c", runtime: "runc")))),
        ])
        let json = graph.jsonRendering().replacingOccurrences(of: "\"reverifyOnResume\" : true,", with: "")
            .replacingOccurrences(of: "\"reverifyOnResume\" : false,", with: "")
        #expect(!json.contains("reverifyOnResume"))
        let decoded = try StepGraph.decodeJSON(Data(json.utf8))
        #expect(decoded.steps.map(\.reverifyOnResume) == [true, false])
        #expect(decoded == graph)
    }

    @Test func jsonOfAnotherFormatVersionIsRefused() throws {
        var graph = StepGraph(plan: "p", steps: [step("a")])
        graph.formatVersion = 2
        #expect(throws: DecodingError.self) { try StepGraph.decodeJSON(Data(graph.jsonRendering().utf8)) }
    }

    @Test func backoffGrowsExponentiallyUpToTheCapAndJitterOnlyShortensIt() {
        let policy = StepRetryPolicy(attempts: 6, initialBackoffMilliseconds: 100, maxBackoffMilliseconds: 500, multiplier: 2, jitter: 0.5)
        #expect((1...5).map { policy.baseDelayMilliseconds(afterAttempt: $0) } == [100, 200, 400, 500, 500])
        #expect(policy.delayMilliseconds(afterAttempt: 2, unit: 0) == 200)
        #expect(policy.delayMilliseconds(afterAttempt: 2, unit: 0.5) == 150)
    }
}
