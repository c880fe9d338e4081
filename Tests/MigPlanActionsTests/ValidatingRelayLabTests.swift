import Foundation
@testable import MigPlanActions
import MigPlanBasics
import MigPlanGraph
import MigPlanModel
import MigPlanSSH
import Testing

extension ApplyLabSuites {
/// The controller's validating relay between two lab hosts (instance3 → instance4): what a user
/// sees when the source fails, and that a refused stream leaves nothing on the destination even
/// when the receiving command is slow to start.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct ValidatingRelayLabTests {
    static let dir = "/var/lib/migplan/relay-tests"

    static func connect(_ n: Int) async throws -> SSHConnection {
        try await SSHConnection.connect(
            to: SSHEndpoint(hostName: "instance\(n)", address: "10.77.0.\(10 + n)"),
            identity: SSHIdentity(privateKeyPath: ApplyLab.labDir + "/keys/controller_ed25519"),
            knownHostsPath: ApplyLab.labDir + "/known_hosts")
    }

    @Test func aFailingSourceIsReportedAsTheSourcesFailureWithItsStderr() async throws {
        try ApplyLab.requireLab()
        let (src, dst) = (try await Self.connect(3), try await Self.connect(4))
        defer { src.close(); dst.close() }
        let part = "\(Self.dir)/missing-source.part"
        _ = try await dst.run("mkdir -p \(Self.dir) && rm -f \(part)", timeout: .seconds(10))
        do {
            _ = try await ValidatingRelay.run(from: src, "cat /var/lib/migplan/relay-tests/no-such-archive", to: dst,
                                              "cat > \(part)", compressed: false, timeout: .seconds(60))
            Issue.record("a relay from a missing file must fail")
        } catch let e as ActionError {
            #expect(e.host == "instance3", "\(e)")
            #expect(e.description.contains("sending the archive failed (exit 1)"), "\(e)")
            #expect(e.description.contains("No such file"), "\(e)")
        }
        _ = try await dst.run("rm -f \(part)", timeout: .seconds(10))
    }

    @Test func aRefusedStreamLeavesNothingOnTheDestinationOnceTheErrorIsReported() async throws {
        try ApplyLab.requireLab()
        let (src, dst) = (try await Self.connect(3), try await Self.connect(4))
        defer { src.close(); dst.close() }
        let part = "\(Self.dir)/refused.part"
        _ = try await dst.run("mkdir -p \(Self.dir) && rm -f \(part)", timeout: .seconds(10))
        // A tar stream whose second entry climbs out of its directory: refused by the validator.
        let hostile = "python3 -c 'import io,sys,tarfile\nb=io.BytesIO()\nt=tarfile.open(fileobj=b,mode=\"w\",format=tarfile.GNU_FORMAT)\n"
            + "i=tarfile.TarInfo(\"d/inventory.img\");t.addfile(i,io.BytesIO())\ni=tarfile.TarInfo(\"../escape\");i.size=5;t.addfile(i,io.BytesIO(b\"pwned\"))\n"
            + "t.close();sys.stdout.buffer.write(b.getvalue())'"
        do {
            _ = try await ValidatingRelay.run(from: src, hostile, to: dst, "sleep 1; cat > \(part)",
                                              compressed: false, timeout: .seconds(60))
            Issue.record("a hostile stream must be refused")
        } catch let e as ActionError {
            #expect(e.kind == .archiveRefused, "\(e)")
        }
        // What a caller does after the failure: remove the part file. Nothing may write it again.
        let out = try await dst.run("rm -f \(part) && sleep 1.5 && ! test -e \(part)", timeout: .seconds(10))
        #expect(out.exitStatus == 0, "the receiving command wrote \(part) after the failure was reported")
    }

    /// Two migrations in opposite directions (instance3 → instance4 and instance4 → instance3)
    /// relaying at the same time: each relay's sending end holds its host's first SSH lane, so the
    /// receiving ends must not need those same lanes (they once did: with the ends queued in the
    /// wrong order, both relays would wait for each other for ever once their pipes were full).
    @Test(.timeLimit(.minutes(2)))
    func relaysInOppositeDirectionsAtOnceBothComplete() async throws {
        try ApplyLab.requireLab()
        let hosts = "  instance3: {address: 10.77.0.13, key: controller}\n  instance4: {address: 10.77.0.14, key: controller}"
        let file = try ApplyLab.writePlan(name: "relay-crossing", containers: """
              a: {runtime: runc, bundle: /var/lib/migplan/bundles/a, stateful: true}
              b: {runtime: runc, bundle: /var/lib/migplan/bundles/b, stateful: true}
            """, migration: """
              - {name: a, containers: [a], from: instance3, to: instance4, flow: stateful}
              - {name: b, containers: [b], from: instance4, to: instance3, flow: stateful}
            """, hosts: hosts, directory: "relay-crossing")
        let plan = try PlanLoader.loadValid(file: file)
        let pool = SessionPool(plan: plan, environment: try ApplyLab.applyEnvironment())
        let runner = LiveStepRunner(plan: plan, graph: try PlanCompiler.compile(plan), sessions: pool)
        defer { Task { await pool.closeAll() } }
        let big = "\(Self.dir)/crossing"
        for h in ["instance3", "instance4"] {
            let made = try await ApplyLab.exec(h, "mkdir -p \(big) && rm -f \(big)/in.part && head -c 50331648 /dev/zero > \(big)/payload")
            #expect(made.succeeded, "\(made.stderrText)")
        }
        let (s1, d1) = try await runner.relayEnds(from: "instance3", to: "instance4")
        let (s2, d2) = try await runner.relayEnds(from: "instance4", to: "instance3")
        // The deadlock needs the four ends queued in one unlucky order (a window of microseconds,
        // not reproduced here); what rules it out is that no receiving end shares a connection
        // with a sending end.
        #expect(d1 !== s2, "the receiving end into instance4 shares instance4's sending connection")
        #expect(d2 !== s1, "the receiving end into instance3 shares instance3's sending connection")
        let send = "tar -c -f - -C \(big) payload"
        let receive = "cat > \(big)/in.part"
        async let one = ValidatingRelay.run(from: s1, send, to: d1, receive, compressed: false, timeout: .seconds(90))
        async let two = ValidatingRelay.run(from: s2, send, to: d2, receive, compressed: false, timeout: .seconds(90))
        let (r1, r2) = try await (one, two)
        #expect(r1.bytes > 50_331_648 && r1.bytes == r2.bytes)
        for h in ["instance3", "instance4"] { _ = try? await ApplyLab.exec(h, "rm -rf \(big)") }
    }
}
}
