import Foundation
@testable import MigPlanActions
import MigPlanBasics
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
}
}
