import Testing
@testable import MigPlanModel

@Suite struct PathExpansionTests {
    let expander = PathExpander(environment: ["LAB": "/srv/lab", "EMPTY": "", "HOME": "/root"], homeDirectory: "/home/ops")

    @Test func relativePathsAreRelativeToThePlanDirectory() throws {
        #expect(try expander.expand("../.lab/known_hosts", relativeTo: "/repo/plans") == "/repo/.lab/known_hosts")
        #expect(try expander.expand("keys/id", relativeTo: "/repo/plans") == "/repo/plans/keys/id")
        #expect(try expander.expand("./a/./b/../c", relativeTo: "/p") == "/p/a/c")
    }

    @Test func absolutePathsStay() throws {
        #expect(try expander.expand("/etc/ssh/known_hosts", relativeTo: "/repo/plans") == "/etc/ssh/known_hosts")
    }

    @Test func tildeExpandsToTheHomeDirectory() throws {
        #expect(try expander.expand("~/.ssh/id_ed25519", relativeTo: "/x") == "/home/ops/.ssh/id_ed25519")
        #expect(try expander.expand("~", relativeTo: "/x") == "/home/ops")
        #expect(throws: PathExpansionError.self) { try expander.expand("~bob/key", relativeTo: "/x") }
        let noHome = PathExpander(environment: ["HOME": "/env/home"], homeDirectory: nil)
        #expect(try noHome.expand("~/k", relativeTo: "/x") == "/env/home/k")
    }

    @Test func variablesExpandAndUnsetOnesAreNamedInTheError() throws {
        #expect(try expander.expand("${LAB}/keys/id", relativeTo: "/x") == "/srv/lab/keys/id")
        #expect(try expander.expand("a${EMPTY}b", relativeTo: "/x") == "/x/ab")
        #expect(try expander.expand("cost$5", relativeTo: "/x") == "/x/cost$5")
        do {
            _ = try expander.expand("${MIGPLAN_NOPE}/k", relativeTo: "/x")
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("MIGPLAN_NOPE"))
        }
        #expect(throws: PathExpansionError.self) { try expander.expand("${LAB", relativeTo: "/x") }
        #expect(throws: PathExpansionError.self) { try expander.expand("${1X}", relativeTo: "/x") }
    }

    @Test func unsetVariableInAPlanIsAnErrorAtTheFieldNamingTheVariable() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "path: id_ed25519", with: "path: ${KEYS_DIR}/id")
        let found = TestSupport.check(text).diagnostics.filter { $0.severity == .error }
        #expect(TestSupport.summary(found) == ["error 7:11 keys.ops.path"])
        #expect(found.first?.message.contains("KEYS_DIR") == true)
    }

    @Test func planPathsAreResolvedAgainstThePlanFile() throws {
        let text = TestSupport.basePlan.replacingOccurrences(of: "path: id_ed25519", with: "path: ${LAB}/id")
        let plan = try #require(TestSupport.check(text, directory: "/repo/plans").plan)
        #expect(plan.ssh.knownHosts == "/repo/plans/known_hosts")
        #expect(plan.keys.first?.path == "/lab/id")
    }
}

@Suite struct ReplicaTests {
    @Test func oneReplicaIsTheContainerItself() {
        #expect(Container.replicaNames(name: "face", replicas: 1) == ["face"])
    }

    @Test func replicasAreNumberedFromOne() {
        #expect(Container.replicaNames(name: "face", replicas: 4) == ["face-1", "face-2", "face-3", "face-4"])
    }

    @Test func planExpandsReplicasOfEveryContainerOfAMigration() throws {
        let text = TestSupport.basePlan
            .replacingOccurrences(of: "    stateful: true\n", with: "    stateful: true\n    replicas: 3\n  db:\n    runtime: runc\n    stateful: true\n")
            .replacingOccurrences(of: "containers: [web]", with: "containers: [web, db]")
        let (plan, diagnostics) = TestSupport.check(text)
        #expect(diagnostics.isEmpty)
        let unwrapped = try #require(plan)
        #expect(unwrapped.instanceNames(of: unwrapped.migrations[0]) == ["web-1", "web-2", "web-3", "db"])
    }
}
