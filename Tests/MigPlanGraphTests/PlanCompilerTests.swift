import Foundation
import MigPlanGraph
import MigPlanModel
import Testing

@Suite("Plan compiler")
struct PlanCompilerTests {
    /// Asserts that `later` comes after `earlier` both in the dependency relation and in the order.
    func expectOrdered(_ graph: StepGraph, _ earlier: StepID, before later: StepID,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(graph.position(earlier) >= 0, "missing \(earlier)", sourceLocation: sourceLocation)
        #expect(graph.position(later) >= 0, "missing \(later)", sourceLocation: sourceLocation)
        #expect(graph.dependsTransitively(later, on: earlier),
                "\(later) must depend on \(earlier)", sourceLocation: sourceLocation)
        #expect(graph.position(earlier) < graph.position(later), sourceLocation: sourceLocation)
    }

    @Test func statefulFlowRunsPreflightSessionsCheckpointArchiveTransferDigestUnpackRestoreVerifyCleanup() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        #expect(graph.steps.map(\.id) == [
            "move.preflight@instance1",
            "move.preflight@instance2",
            "move.sessions@controller",
            "app.checkpoint@instance1",
            "move.archive@instance1",
            "move.transfer@controller",
            "move.verifyDigest@instance2",
            "move.unpack@instance2",
            "app.restore@instance2",
            "app.verifyRunning@instance2",
            "app.cleanupSource@instance1",
            "move.cleanupIncoming@instance2",
            "move.cleanupArchive@instance1",
        ])
        let chain = ["move.preflight@instance1", "move.sessions@controller", "app.checkpoint@instance1",
                     "move.archive@instance1", "move.transfer@controller", "move.verifyDigest@instance2",
                     "move.unpack@instance2", "app.restore@instance2", "app.verifyRunning@instance2",
                     "app.cleanupSource@instance1"]
        for (earlier, later) in zip(chain, chain.dropFirst()) { expectOrdered(graph, earlier, before: later) }
        expectOrdered(graph, "move.preflight@instance2", before: "move.sessions@controller")
        expectOrdered(graph, "app.verifyRunning@instance2", before: "move.cleanupArchive@instance1")
    }

    @Test func statefulPreflightChecksRuntimeCriuAndFreeSpaceOnBothHosts() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, runtime: .docker))
        for host in ["instance1", "instance2"] {
            let step = try #require(graph.step("move.preflight@\(host)"))
            #expect(step.location == .host(host))
            #expect(step.action == .preflight(PreflightAction(runtimes: ["docker"], criuCheck: true, workDir: "/var/lib/migplan")))
        }
    }

    @Test func statefulStepsCarryThePaperMetricsAndRunWhereTheyShould() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        let checkpoint = try #require(graph.step("app.checkpoint@instance1"))
        #expect(checkpoint.metrics == [.checkpoint, .downtime, .total])
        #expect(checkpoint.location == .host("instance1"))
        #expect(checkpoint.idempotentByProbe)
        #expect(try #require(graph.step("move.transfer@controller")).metrics == [.transfer, .downtime, .total])
        #expect(try #require(graph.step("app.restore@instance2")).metrics == [.restore, .downtime, .total])
        #expect(try #require(graph.step("app.cleanupSource@instance1")).metrics == [])
    }

    @Test func digestVerificationReadsTheTransferStepsDigestBeforeUnpacking() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, compression: .none))
        let verify = try #require(graph.step("move.verifyDigest@instance2"))
        guard case .verifyDigest(let action) = verify.action else { Issue.record("wrong action"); return }
        #expect(action.digestFrom == "move.transfer@controller")
        #expect(action.archivePath == "/var/lib/migplan/incoming/move.tar")
        guard case .unpack(let unpack) = try #require(graph.step("move.unpack@instance2")).action else {
            Issue.record("wrong action"); return
        }
        #expect(unpack.archivePath == action.archivePath)
        #expect(unpack.compression == .none)
    }

    @Test func directTransferRunsOnTheSourceAndRelayOnTheController() throws {
        let direct = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, path: .direct))
        let step = try #require(direct.step("move.transfer@instance1"))
        guard case .transfer(let action) = step.action else { Issue.record("wrong action"); return }
        #expect(action.route == .direct)
        #expect(direct.step("move.transfer@controller") == nil)
    }

    @Test func directTransferIssuesAOneTimeKeyBeforeTheFreezeAndRevokesItOffTheDowntimePath() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, path: .direct))
        let issue = try #require(graph.step("move.issueTransferKey@controller"))
        let revoke = try #require(graph.step("move.revokeTransferKey@controller"))
        #expect(issue.dependsOn == ["move.sessions@controller"])
        #expect(Set(try #require(graph.step("app.checkpoint@instance1")).dependsOn) == ["move.sessions@controller", issue.id])
        #expect(try #require(graph.step("move.transfer@instance1")).dependsOn == ["move.archive@instance1"])
        // The key arms the rollback like the checkpoint: a move stopped after it revokes it.
        #expect(try #require(graph.rollbacks.first).armedBy == ["app.checkpoint@instance1", issue.id])
        #expect(revoke.dependsOn == ["app.verifyRunning@instance2"])
        #expect(graph.dependsTransitively(revoke.id, on: "move.transfer@instance1"))
        guard case .issueTransferKey(let key) = issue.action, case .revokeTransferKey(let same) = revoke.action else {
            Issue.record("wrong actions"); return
        }
        #expect(key == same)
        #expect(key.keysDir == "/var/lib/migplan/keys")
        #expect(key.keysFile == nil)
        #expect(key.destinationPath == "/var/lib/migplan/incoming/move.tar.zz")
        // The unpack does not wait for the revocation (no downtime added).
        #expect(!graph.dependsTransitively("move.unpack@instance2", on: revoke.id))
    }

    @Test func directTransferKeyIsAlsoRevokedByTheRollbackFirst() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, path: .direct))
        let group = try #require(graph.rollbacks.first)
        #expect(group.steps.map(\.id) == [
            "app.rollbackTransferKey@controller", "app.cleanupDestination@instance2", "app.removeArchive@instance1",
            "app.restoreOnSource@instance1", "app.verifyRunning@instance1",
        ])
        guard case .revokeTransferKey = group.steps[0].action else { Issue.record("wrong action"); return }
        #expect(group.steps[0].dependsOn.isEmpty)
    }

    @Test func relayTransferHasNoKeySteps() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        #expect(graph.ids(ofKind: "issueTransferKey").isEmpty)
        #expect(graph.ids(ofKind: "revokeTransferKey").isEmpty)
        #expect(graph.rollbacks.allSatisfy { !$0.steps.contains { $0.action.kind == "revokeTransferKey" } })
    }

    @Test func transferKeysFileOfTheDestinationReachesTheKeySteps() throws {
        var plan = PlanFixtures.plan(flow: .stateful, archive: .perContainer, path: .direct)
        plan.hosts[1].transferKeysFile = "/var/lib/migplan/ssh/authorized_keys"
        let graph = try PlanCompiler.compile(plan)
        let issue = try #require(graph.step("move/app.issueTransferKey@controller"))
        guard case .issueTransferKey(let key) = issue.action else { Issue.record("wrong action"); return }
        #expect(key.keysFile == "/var/lib/migplan/ssh/authorized_keys")
        #expect(graph.step("move/app.revokeTransferKey@controller") != nil)
    }

    @Test func receivedManifestAndItsMACAreRemovedWithTheArchive() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        guard case .cleanupDestination(let c) = try #require(graph.step("move.cleanupIncoming@instance2")).action else {
            Issue.record("wrong action"); return
        }
        #expect(c.paths.contains("/var/lib/migplan/incoming/move.tar.zz.manifest"))
        #expect(c.paths.contains("/var/lib/migplan/incoming/move.tar.zz.manifest.hmac"))
    }

    @Test func statefulRollbackIsArmedByTheCheckpointAndDisarmedByDestinationVerification() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        let group = try #require(graph.rollbacks.first)
        #expect(graph.rollbacks.count == 1)
        #expect(group.id == "app.rollback")
        #expect(group.armedBy == ["app.checkpoint@instance1"])
        #expect(group.disarmedBy == ["app.verifyRunning@instance2"])
        #expect(group.steps.map(\.id) == [
            "app.cleanupDestination@instance2", "app.removeArchive@instance1", "app.restoreOnSource@instance1",
            "app.verifyRunning@instance1",
        ])
        #expect(group.steps.allSatisfy { $0.role == .rollback })
        guard case .restoreOnSource(let restore) = group.steps[2].action else { Issue.record("wrong action"); return }
        #expect(restore.imagesDir == "/var/lib/migplan/checkpoints/move/app")
        // Steps between checkpoint and destination verification show the rollback; others do not.
        #expect(try #require(graph.step("move.transfer@controller")).onFailure == ["app.rollback"])
        #expect(try #require(graph.step("app.checkpoint@instance1")).onFailure == ["app.rollback"])
        #expect(try #require(graph.step("app.verifyRunning@instance2")).onFailure == ["app.rollback"])
        #expect(try #require(graph.step("move.preflight@instance1")).onFailure == [])
        #expect(try #require(graph.step("app.cleanupSource@instance1")).onFailure == [])
    }

    @Test func failurePolicyNoneCompilesNoRollback() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, onFailure: .none))
        #expect(graph.rollbacks.isEmpty)
        #expect(graph.steps.allSatisfy { $0.onFailure.isEmpty })
    }

    @Test func multiUserSingleArchiveCheckpointsAllReplicasConcurrentlyIntoOneArchive() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, replicas: 4, containers: ["face"]))
        let checkpoints = graph.ids(ofKind: "checkpoint")
        #expect(checkpoints == (1...4).map { "face-\($0).checkpoint@instance1" })
        // Checkpoints depend only on the sessions step, never on each other: they may run together.
        for id in checkpoints {
            #expect(graph.step(id)?.dependsOn == ["move.sessions@controller"])
        }
        #expect(graph.ids(ofKind: "archive") == ["move.archive@instance1"])
        #expect(Set(try #require(graph.step("move.archive@instance1")).dependsOn) == Set(checkpoints))
        #expect(graph.ids(ofKind: "transfer").count == 1)
        #expect(graph.ids(ofKind: "restore") == (1...4).map { "face-\($0).restore@instance2" })
        for replica in 1...4 {
            expectOrdered(graph, "move.transfer@controller", before: "face-\(replica).restore@instance2")
            expectOrdered(graph, "face-\(replica).verifyRunning@instance2", before: "face-\(replica).cleanupSource@instance1")
            expectOrdered(graph, "face-\(replica).verifyRunning@instance2", before: "move.cleanupArchive@instance1")
        }
        #expect(graph.rollbacks.map(\.id) == (1...4).map { "face-\($0).rollback" })
        guard case .checkpoint(let action) = try #require(graph.step("face-3.checkpoint@instance1")).action else {
            Issue.record("wrong action"); return
        }
        #expect(action.instance == ContainerInstance(name: "face-3", container: "face", runtime: "runc", replica: 3))
    }

    @Test func multiUserPerContainerArchivesTransferEachReplicaOnItsOwn() throws {
        let graph = try PlanCompiler.compile(
            PlanFixtures.plan(flow: .stateful, replicas: 2, containers: ["face"], archive: .perContainer))
        #expect(graph.ids(ofKind: "archive") == ["move/face-1.archive@instance1", "move/face-2.archive@instance1"])
        #expect(graph.ids(ofKind: "transfer") == ["move/face-1.transfer@controller", "move/face-2.transfer@controller"])
        #expect(graph.step("move/face-1.archive@instance1")?.dependsOn == ["face-1.checkpoint@instance1"])
        expectOrdered(graph, "move/face-1.unpack@instance2", before: "face-1.restore@instance2")
        #expect(!graph.dependsTransitively("face-2.restore@instance2", on: "move/face-1.transfer@controller"))
        #expect(graph.step("move.cleanupArchive@instance1") == nil)
    }

    @Test func stopFirstKillsOnSourceBeforeStartingOnDestination() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateless(order: .stopFirst)))
        #expect(graph.steps.map(\.id) == [
            "move.preflight@instance1", "move.preflight@instance2", "move.sessions@controller",
            "app.kill@instance1", "app.start@instance2", "app.verifyRunning@instance2", "app.cleanupSource@instance1",
        ])
        expectOrdered(graph, "app.kill@instance1", before: "app.start@instance2")
        #expect(graph.step("app.kill@instance1")?.metrics == [.kill, .downtime, .total])
        #expect(graph.step("app.start@instance2")?.metrics == [.start, .downtime, .total])
        guard case .preflight(let preflight) = try #require(graph.step("move.preflight@instance1")).action else {
            Issue.record("wrong action"); return
        }
        #expect(!preflight.criuCheck)
        let group = try #require(graph.rollbacks.first)
        #expect(group.armedBy == ["app.kill@instance1"])
        #expect(group.steps.map(\.id) == ["app.cleanupDestination@instance2", "app.start@instance1", "app.verifyRunning@instance1"])
    }

    @Test func startFirstStopsTheSourceOnlyAfterTheDestinationIsVerified() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateless(order: .startFirst), replicas: 2))
        for name in ["app-1", "app-2"] {
            expectOrdered(graph, "\(name).start@instance2", before: "\(name).verifyRunning@instance2")
            expectOrdered(graph, "\(name).verifyRunning@instance2", before: "\(name).stop@instance1")
            expectOrdered(graph, "\(name).stop@instance1", before: "\(name).cleanupSource@instance1")
            #expect(graph.step("\(name).stop@instance1")?.metrics == [.kill, .total])
        }
        #expect(graph.ids(ofKind: "kill").isEmpty)
        #expect(graph.steps.allSatisfy { !$0.metrics.contains(.downtime) })
        #expect(graph.rollbacks.first?.steps.map(\.id) == ["app-1.cleanupDestination@instance2"])
    }

    @Test func retryPolicyComesFromTheMigration() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, attempts: 5))
        let retry = try #require(graph.steps.first).retry
        #expect(retry.attempts == 5)
        #expect(retry.initialBackoffMilliseconds == 500)
        #expect(retry.maxBackoffMilliseconds == 4000)
        #expect(retry.multiplier == 2)
    }

    @Test func unknownHostIsACompileErrorNamingIt() {
        var plan = PlanFixtures.plan(flow: .stateful)
        plan.migrations[0].to = "nowhere"
        #expect(throws: GraphError.unknownReference(kind: "host", name: "nowhere", in: "migration \"move\"")) {
            try PlanCompiler.compile(plan)
        }
    }

    @Test func twoMigrationsAreIndependent() throws {
        var plan = PlanFixtures.plan(flow: .stateful, containers: ["a", "b"])
        var second = plan.migrations[0]
        plan.migrations[0].containers = ["a"]
        second.name = "other"
        second.containers = ["b"]
        plan.migrations.append(second)
        let graph = try PlanCompiler.compile(plan)
        #expect(!graph.dependsTransitively("b.restore@instance2", on: "a.checkpoint@instance1"))
        #expect(!graph.dependsTransitively("a.restore@instance2", on: "b.checkpoint@instance1"))
        #expect(graph.rollbacks.map(\.migration) == ["move", "other"])
    }

    // MARK: Review fixes

    /// Every host path a graph names, with the host it is on.
    func hostPaths(_ graph: StepGraph) -> [(String, String)] {
        graph.steps.flatMap { step -> [(String, String)] in
            switch step.action {
            case .checkpoint(let a): return [("instance1", a.imagesDir)]
            case .archive(let a): return [("instance1", a.archivePath)]
            case .transfer(let a): return [("instance2", a.destinationPath)]
            default: return []
            }
        }
    }

    @Test func aMigrationNamedLikeAContainerNeverSharesStepIdsOrPathsWithIt() throws {
        // validate used to pass this plan and plan failed on `two steps have the id a.archive@instance1`.
        var plan = PlanFixtures.plan(flow: .stateful, containers: ["a", "b"], archive: .perContainer)
        var second = plan.migrations[0]
        plan.migrations[0].name = "m1"
        plan.migrations[0].containers = ["a"]
        second.name = "a"
        second.containers = ["b"]
        second.transfer.archive = .single
        plan.migrations.append(second)
        let graph = try PlanCompiler.compile(plan)
        let ids = graph.allSteps.map(\.id)
        #expect(Set(ids).count == ids.count)
        #expect(graph.ids(ofKind: "archive") == ["m1/a.archive@instance1", "a.archive@instance1"])
        let paths = hostPaths(graph).map { "\($0.0):\($0.1)" }
        #expect(Set(paths).count == paths.count, "\(paths)")
        #expect(paths.contains("instance1:/var/lib/migplan/archives/m1.d/a.tar.zz"))
        #expect(paths.contains("instance1:/var/lib/migplan/archives/a.tar.zz"))
        #expect(paths.contains("instance2:/var/lib/migplan/incoming/m1.d/a.tar.zz"))
        #expect(paths.contains("instance2:/var/lib/migplan/incoming/a.tar.zz"))
    }

    @Test func anArchiveFileNeverSitsWhereAnotherMigrationNeedsADirectory() throws {
        // Migration "x" (one uncompressed archive: archives/x.tar) and migration "x.tar" (per
        // container: a directory for its archives) must not fight over archives/x.tar.
        var plan = PlanFixtures.plan(flow: .stateful, containers: ["a", "b"], archive: .single, compression: .none)
        var second = plan.migrations[0]
        plan.migrations[0].name = "x"
        plan.migrations[0].containers = ["a"]
        second.name = "x.tar"
        second.containers = ["b"]
        second.transfer.archive = .perContainer
        plan.migrations.append(second)
        let graph = try PlanCompiler.compile(plan)
        let paths = hostPaths(graph).map { "\($0.0):\($0.1)" }
        #expect(Set(paths).count == paths.count)
        for path in paths {
            for other in paths where other != path {
                #expect(!other.hasPrefix(path + "/"), "\(other) needs \(path) to be a directory")
            }
        }
        #expect(paths.contains("instance1:/var/lib/migplan/archives/x.tar"))
        #expect(paths.contains("instance1:/var/lib/migplan/archives/x.tar.d/b.tar"))
    }

    @Test func aStatefulRollbackRemovesBothArchivesAndTheDestinationsRestoreDirectory() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        let group = try #require(graph.rollbacks.first)
        guard case .cleanupDestination(let destination) = try #require(group.steps.first { $0.id == "app.cleanupDestination@instance2" }).action,
              case .cleanupSource(let source) = try #require(group.steps.first { $0.id == "app.removeArchive@instance1" }).action
        else { Issue.record("wrong actions"); return }
        #expect(destination.instances.map(\.name) == ["app"])
        for path in ["/var/lib/migplan/restore/move/app", "/var/lib/migplan/incoming/move.tar.zz",
                     "/var/lib/migplan/incoming/move.tar.zz.sha256", "/var/lib/migplan/restore/move/.unpacked-move.tar.zz"] {
            #expect(destination.paths.contains(path), "rollback leaves \(path) on the destination")
        }
        #expect(source.instances.isEmpty)
        #expect(source.paths.contains("/var/lib/migplan/archives/move.tar.zz"))
        // The source's own images stay: the rollback restores from them.
        #expect(!source.paths.contains("/var/lib/migplan/checkpoints/move/app"))
    }

    @Test func afterVerificationTheDestinationsIncomingArchiveAndRestoreDirectoryAreRemoved() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful, replicas: 2, containers: ["face"]))
        let cleanup = try #require(graph.step("move.cleanupIncoming@instance2"))
        #expect(cleanup.location == .host("instance2"))
        expectOrdered(graph, "face-1.verifyRunning@instance2", before: "move.cleanupIncoming@instance2")
        expectOrdered(graph, "face-2.verifyRunning@instance2", before: "move.cleanupIncoming@instance2")
        guard case .cleanupDestination(let action) = cleanup.action else { Issue.record("wrong action"); return }
        #expect(action.instances.isEmpty, "the verified containers must never be removed")
        for path in ["/var/lib/migplan/incoming/move.tar.zz", "/var/lib/migplan/restore/move/face-1",
                     "/var/lib/migplan/restore/move/face-2", "/var/lib/migplan/restore/move/.unpacked-move.tar.zz"] {
            #expect(action.paths.contains(path), "\(path) stays on the destination")
        }
        #expect(cleanup.onFailure.isEmpty)
    }

    @Test func gatesAreMarkedToBeCheckedAgainOnResume() throws {
        let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: .stateful))
        let gates = graph.allSteps.filter(\.reverifyOnResume).map(\.id)
        #expect(gates == ["move.preflight@instance1", "move.preflight@instance2", "move.verifyDigest@instance2",
                          "app.verifyRunning@instance2", "app.verifyRunning@instance1"])
    }

    @Test func everyStepHasTheTimeoutOfItsKindOfAction() throws {
        for flow: Flow in [.stateful, .stateless(order: .stopFirst), .stateless(order: .startFirst)] {
            let graph = try PlanCompiler.compile(PlanFixtures.plan(flow: flow))
            for step in graph.allSteps {
                #expect(step.timeoutSeconds == step.action.defaultTimeoutSeconds, "\(step.id)")
                #expect((step.timeoutSeconds ?? 0) >= 60, "\(step.id)")
            }
        }
        #expect(StepAction.transfer(TransferAction(from: "a", to: "b", route: .relay, sourcePath: "/s", destinationPath: "/d"))
            .defaultTimeoutSeconds == 3600)
    }

    @Test func aGraphErrorIsAPositionedDiagnosticAndRendersAsJSON() throws {
        let plan = PlanFixtures.plan(flow: .stateful)
        let diagnostic = PlanCompiler.diagnostic(for: .duplicateStep("x"), in: plan)
        #expect(diagnostic.description.hasPrefix("test.yaml:1:1: error:"))
        let json = StepGraph.failureJSON(diagnostics: [diagnostic])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["formatVersion"] as? Int == 1)
        #expect(object["valid"] as? Bool == false)
        let first = try #require((object["diagnostics"] as? [[String: Any]])?.first)
        #expect(first["message"] as? String == "cannot compile the step graph: two steps have the id x")
        #expect(first["line"] as? Int == 1)
    }
}
