import Foundation
import MigPlanBasics
@testable import MigPlanSSH
import Testing

/// The page-server tunnel's SSH half against the lab (instance7 → instance8): a connection made
/// to the source's loopback reaches a service on the destination's loopback through the
/// controller, inside SSH channels only, every byte hashed.
@Suite("SSH forwarding on the lab", .serialized, .enabled(if: !Lab.skipRequested, "MIGPLAN_SKIP_LAB=1 is set"))
struct ForwardingLabTests {
    /// A one-shot service on the destination's loopback: reads everything, answers the SHA-256 of it.
    static let server = """
        import hashlib, socket, sys
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(60)
        c, _ = s.accept(); h = hashlib.sha256()
        while True:
            b = c.recv(1 << 16)
            if not b: break
            h.update(b)
        c.sendall(h.hexdigest().encode()); c.close()
        """

    /// The source's client: sends `n` random bytes to the loopback port, prints their SHA-256 and the answer.
    static let client = """
        import hashlib, os, socket, sys
        data = os.urandom(int(sys.argv[2])); c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        c.sendall(data); c.shutdown(socket.SHUT_WR); answer = b""
        while True:
            b = c.recv(1 << 16)
            if not b: break
            answer += b
        print(hashlib.sha256(data).hexdigest(), answer.decode())
        """

    @Test func bytesSentToTheSourcesLoopbackReachTheDestinationsLoopbackServiceAndTheAnswerComesBack() async throws {
        let source = try await Lab.connect(7)
        defer { source.close() }
        let destination = try await Lab.connect(8)
        defer { destination.close() }
        let port = Int.random(in: 30000...39999)
        let started = try await destination.run(
            "nohup python3 -c \(Self.server.shellQuoted) \(port) >/dev/null 2>&1 & "
                + "for i in $(seq 50); do ss -ltn | grep -q ':\(port) ' && exit 0; sleep 0.1; done; exit 1",
            timeout: .seconds(20))
        #expect(started.exitStatus == 0, "the test service did not start: \(started.stderrText)")
        let listener = try await source.listenRemote()
        #expect(listener.port > 0)
        let size = 20 << 20
        let result = try await SSHForwarding.runSpliced(
            command: "python3 -c \(Self.client.shellQuoted) \(listener.port) \(size)", listener: listener,
            to: destination, targetPort: port, timeout: .seconds(120))
        await listener.cancel()
        #expect(result.command.exitStatus == 0, "\(result.command.stderrText)")
        #expect(result.accepted)
        #expect(result.forwardBytes == Int64(size))
        let words = result.command.stdoutText.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(words.count == 2)
        // What the source sent is what the controller hashed, and what the destination received.
        #expect(words.first == result.forwardSHA256.hex)
        #expect(words.last == result.forwardSHA256.hex)
        #expect(result.backwardBytes == 64)
    }

    @Test func aCommandThatNeverConnectsEndsTheTunnelAndReportsItsStatus() async throws {
        let source = try await Lab.connect(7)
        defer { source.close() }
        let destination = try await Lab.connect(8)
        defer { destination.close() }
        let port = Int.random(in: 30000...39999)
        _ = try await destination.run(
            "nohup timeout 20 python3 -c \(Self.server.shellQuoted) \(port) >/dev/null 2>&1 & "
                + "for i in $(seq 50); do ss -ltn | grep -q ':\(port) ' && exit 0; sleep 0.1; done; exit 1",
            timeout: .seconds(20))
        let listener = try await source.listenRemote()
        let result = try await SSHForwarding.runSpliced(
            command: "echo dump failed >&2; exit 7", listener: listener, to: destination, targetPort: port,
            timeout: .seconds(60))
        await listener.cancel()
        #expect(result.command.exitStatus == 7)
        #expect(!result.accepted)
        #expect(result.forwardBytes == 0)
    }

    @Test func theLabsSshdRefusesToListenOnAnAddressOtherThanLoopback() async throws {
        let source = try await Lab.connect(7)
        defer { source.close() }
        await #expect(throws: SSHError.self) { _ = try await source.listenRemote(address: "10.77.0.17") }
        await #expect(throws: SSHError.self) { _ = try await source.listenRemote(address: "0.0.0.0") }
        // The session is still usable afterwards.
        let out = try await source.run("true", timeout: .seconds(10))
        #expect(out.exitStatus == 0)
    }
}
