import Foundation
import MigPlanBasics
@testable import MigPlanSSH
import Synchronization
import Testing

/// Integration tests against the lab's real sshd hosts (scripts/lab up). Skipped only when
/// MIGPLAN_SKIP_LAB=1; otherwise a missing lab is a failure that says to run `scripts/lab up`.
@Suite("SSH against the lab", .serialized, .enabled(if: !Lab.skipRequested, "MIGPLAN_SKIP_LAB=1 is set"))
struct LabSSHTests {
    static let bigSize = 256 * 1024 * 1024
    static let remoteDir = "/var/lib/migplan/ssh-tests"

    /// A local file of `bigSize` random bytes and its SHA-256.
    private func makeBigFile(_ dir: TempDir) throws -> (path: String, sha: String) {
        let path = dir.file("big.bin")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        defer { close(fd) }
        let chunk = 4 << 20
        let hasher = SHA256Hasher()
        var written = 0
        while written < Self.bigSize {
            let bytes = secureRandomBytes(min(chunk, Self.bigSize - written))
            hasher.update(bytes)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            written += bytes.count
        }
        return (path, hasher.finalize().hex)
    }

    private func remoteSHA(_ conn: SSHConnection, _ path: String) async throws -> String {
        let out = try await conn.run("sha256sum \(path.shellQuoted)", timeout: .seconds(60))
        #expect(out.exitStatus == 0, "\(out.stderrText)")
        return String(out.stdoutText.prefix(64))
    }

    @Test func connectsToLabHostsWithExactlyThePaperAlgorithmsAndKnownFingerprint() async throws {
        let knownHosts = try String(contentsOfFile: Lab.knownHosts, encoding: .utf8)
        for n in [1, 2] {
            let conn = try await Lab.connect(n)
            defer { conn.close() }
            let a = conn.negotiatedAlgorithms
            #expect(a.kex == "diffie-hellman-group-exchange-sha256")
            #expect(a.hostKey == "ssh-ed25519")
            #expect(a.cipherClientToServer == "aes256-ctr" && a.cipherServerToClient == "aes256-ctr")
            #expect(a.macClientToServer == "hmac-sha2-256" && a.macServerToClient == "hmac-sha2-256")
            #expect(conn.serverBanner.hasPrefix("SSH-2.0-OpenSSH"))
            let line = try #require(knownHosts.split(separator: "\n").first { $0.hasPrefix("10.77.0.\(10 + n) ") })
            let blob = try #require(Data(base64Encoded: String(line.split(separator: " ")[2])))
            #expect(conn.hostKeyFingerprint == "SHA256:" + SHA256Hasher.hash(blob).base64Unpadded)
            let out = try await conn.run("hostname -I; id -un", timeout: .seconds(10))
            #expect(out.stdoutText.contains("10.77.0.\(10 + n)"))
            #expect(out.stdoutText.hasSuffix("root\n"))
        }
    }

    @Test func remoteCommandWriting10MBToStderrAndExiting3ReturnsStatus3WithBothStreams() async throws {
        let conn = try await Lab.connect(1)
        defer { conn.close() }
        let out = try await conn.run(
            "head -c 10485760 /dev/zero | tr '\\0' e >&2 & head -c 1048576 /dev/zero | tr '\\0' o; wait; exit 3",
            timeout: .seconds(60))
        #expect(out.exitStatus == 3)
        #expect(out.stderr.count == 10_485_760,
                "unexpected stderr: \(String(decoding: out.stderr.filter { $0 != UInt8(ascii: "e") }, as: UTF8.self))")
        #expect(out.stdout.count == 1_048_576)
        #expect(out.stderr.allSatisfy { $0 == UInt8(ascii: "e") })
        #expect(out.stdout.allSatisfy { $0 == UInt8(ascii: "o") })
    }

    @Test func hostileContainerNamesReachTheRemoteShellAsLiterals() async throws {
        let conn = try await Lab.connect(1)
        defer { conn.close() }
        _ = try await conn.run("rm -f /tmp/pwned /tmp/pwned2", timeout: .seconds(10))
        let names = [
            "x; rm -rf /", "$(touch /tmp/pwned)", "`touch /tmp/pwned2`", "it's \"quoted\"", "line1\nline2",
            "-n", "*", "a\\b", "tab\there", "", "$HOME", "a'b'c", "semi;colon&&and|pipe>redir",
        ]
        for name in names {
            let out = try await conn.run("printf '%s' " + name.shellQuoted, timeout: .seconds(10))
            #expect(out.exitStatus == 0)
            #expect(out.stdoutText == name, "name \(name.debugDescription) came back as \(out.stdoutText.debugDescription)")
        }
        let check = try await conn.run("test -e /tmp/pwned || test -e /tmp/pwned2", timeout: .seconds(10))
        #expect(check.exitStatus == 1, "a hostile name was executed")
    }

    @Test func uploadAndDownload256MBOverSFTPWithMatchingDigests() async throws {
        let dir = try TempDir("sftp")
        defer { dir.remove() }
        let (local, sha) = try makeBigFile(dir)
        let conn = try await Lab.connect(1)
        defer { conn.close() }
        _ = try await conn.run("mkdir -p \(Self.remoteDir)", timeout: .seconds(10))
        let remote = Self.remoteDir + "/sftp-upload.bin"
        let up = try await conn.upload(localPath: local, remotePath: remote)
        #expect(up.bytes == Int64(Self.bigSize))
        #expect(up.sha256.hex == sha)
        #expect(try await remoteSHA(conn, remote) == sha)

        let back = dir.file("back.bin")
        let down = try await conn.download(remotePath: remote, localPath: back)
        #expect(down.bytes == Int64(Self.bigSize))
        #expect(down.sha256.hex == sha)
        let localCheck = try sh("/usr/bin/sha256sum", [back]).output
        #expect(localCheck.hasPrefix(sha))
        _ = try await conn.run("rm -f \(remote)", timeout: .seconds(10))
        print("sftp 256 MiB: upload \(Int(up.megabytesPerSecond)) MB/s, download \(Int(down.megabytesPerSecond)) MB/s")
    }

    @Test func stream256MBThroughRemoteCommandsBothWaysWithMatchingDigests() async throws {
        let dir = try TempDir("stream")
        defer { dir.remove() }
        let (local, sha) = try makeBigFile(dir)
        let conn = try await Lab.connect(2)
        defer { conn.close() }
        _ = try await conn.run("mkdir -p \(Self.remoteDir)", timeout: .seconds(10))
        let remote = Self.remoteDir + "/stream.bin"
        let up = try await conn.runStreaming("cat > \(remote)", stdin: try FileByteSource(path: local))
        #expect(up.exitStatus == 0)
        #expect(up.stdinBytes == Int64(Self.bigSize))
        #expect(up.stdinSHA256.hex == sha)
        #expect(try await remoteSHA(conn, remote) == sha)

        let sink = try FileByteSink(path: dir.file("back.bin"))
        let down = try await conn.runStreaming("cat \(remote)", stdout: sink)
        #expect(down.exitStatus == 0)
        #expect(down.stdoutBytes == Int64(Self.bigSize))
        #expect(down.stdoutSHA256.hex == sha)
        _ = try await conn.run("rm -f \(remote)", timeout: .seconds(10))
    }

    /// A local source that fails mid-stream: the remote command sees end-of-input and has ended
    /// before the error is reported, so whoever cleans up after the failure removes what the
    /// command wrote, even a command slow to start writing.
    @Test func aFailingLocalSourceIsReportedOnlyAfterTheRemoteCommandEnded() async throws {
        final class FailingSource: SSHByteSource {
            let sent = Mutex(false)
            func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                if sent.withLock({ let was = $0; $0 = true; return was }) { throw SSHLocalIOError("refused by the validator") }
                buffer.initializeMemory(as: UInt8.self, repeating: 0x41)
                return min(buffer.count, 4096)
            }
        }
        let conn = try await Lab.connect(1)
        defer { conn.close() }
        let remote = Self.remoteDir + "/failing-source.part"
        _ = try await conn.run("mkdir -p \(Self.remoteDir) && rm -f \(remote)", timeout: .seconds(10))
        do {
            _ = try await conn.runStreaming("sleep 1; cat > \(remote)", stdin: FailingSource(), timeout: .seconds(30))
            Issue.record("a failing source must fail the command")
        } catch {
            #expect(error.kind == .localIO, "\(error)")
            #expect(error.description.contains("refused by the validator"), "\(error)")
        }
        // The command ended: the file it made is there now and nothing writes to it any more.
        let out = try await conn.run("test -f \(remote) && rm -f \(remote) && sleep 1.5 && ! test -e \(remote)", timeout: .seconds(10))
        #expect(out.exitStatus == 0, "the remote command was still running after the failure was reported")
        // The connection stays usable.
        #expect(try await conn.run("echo ok", timeout: .seconds(10)).stdoutText == "ok\n")
    }

    @Test func relay256MBFromInstance1ToInstance2MatchesSha256sumOnBothHosts() async throws {
        let src = try await Lab.connect(1)
        let dst = try await Lab.connect(2)
        defer { src.close(); dst.close() }
        _ = try await src.run("mkdir -p \(Self.remoteDir)", timeout: .seconds(10))
        _ = try await dst.run("mkdir -p \(Self.remoteDir)", timeout: .seconds(10))
        let srcPath = Self.remoteDir + "/relay-src.bin"
        let dstPath = Self.remoteDir + "/relay-dst.bin"
        let made = try await src.run("head -c \(Self.bigSize) /dev/urandom > \(srcPath)", timeout: .seconds(60))
        #expect(made.exitStatus == 0)
        let srcSHA = try await remoteSHA(src, srcPath)

        let result = try await SSHRelay.pipe(from: src, command: "cat \(srcPath)", to: dst,
                                             command: "cat > \(dstPath) && sha256sum \(dstPath)")
        #expect(result.bytes == Int64(Self.bigSize))
        #expect(result.sha256.hex == srcSHA)
        #expect(result.destination.stdoutText.hasPrefix(srcSHA))
        print("relay 256 MiB instance1 -> instance2: \(Int(result.megabytesPerSecond)) MB/s")
        _ = try await src.run("rm -f \(srcPath)", timeout: .seconds(10))
        _ = try await dst.run("rm -f \(dstPath)", timeout: .seconds(10))
    }

    @Test func relayErrorsSayWhichSideFailed() async throws {
        let src = try await Lab.connect(1)
        let dst = try await Lab.connect(2)
        defer { src.close(); dst.close() }
        let e1 = await sshError {
            try await SSHRelay.pipe(from: src, command: "echo data; echo broken >&2; exit 4", to: dst, command: "cat > /dev/null")
        }
        #expect(e1?.kind == .remoteCommandFailed)
        #expect(e1?.hostName == "instance1")
        #expect(e1?.operation.hasPrefix("relay source") == true)
        #expect(e1?.message.contains("status 4") == true)
        #expect(e1?.message.contains("broken") == true)

        let e2 = await sshError {
            try await SSHRelay.pipe(from: src, command: "echo data", to: dst, command: "cat > /dev/null; echo nope >&2; exit 5")
        }
        #expect(e2?.kind == .remoteCommandFailed)
        #expect(e2?.hostName == "instance2")
        #expect(e2?.operation.hasPrefix("relay destination") == true)
        #expect(e2?.message.contains("status 5") == true)
        // Both connections are still usable.
        #expect(try await src.run("true", timeout: .seconds(5)).exitStatus == 0)
        #expect(try await dst.run("true", timeout: .seconds(5)).exitStatus == 0)
    }

    @Test func relayBetweenTwoCommandsOnTheSameHost() async throws {
        let conn = try await Lab.connect(1)
        defer { conn.close() }
        let result = try await SSHRelay.pipe(from: conn, command: "head -c 33554432 /dev/zero", to: conn,
                                             command: "wc -c")
        #expect(result.bytes == 33_554_432)
        #expect(result.destination.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "33554432")
    }

    @Test func unroutableLabAddressIsBoundedByTheConnectTimeout() async throws {
        try Lab.requireUp()
        let start = ContinuousClock.now
        let error = await sshError {
            try await SSHConnection.connect(
                to: SSHEndpoint(hostName: "ghost", address: "10.77.0.250"), identity: SSHIdentity(privateKeyPath: Lab.key),
                knownHostsPath: Lab.knownHosts, connectTimeout: .seconds(2))
        }
        let elapsed = ContinuousClock.now - start
        let e = try #require(error)
        #expect(e.kind == .connectTimeout || e.kind == .hostUnreachable, "\(e)")
        #expect(e.isRetryable)
        #expect(elapsed < .seconds(4), "took \(elapsed)")
    }

    @Test func manyConcurrentCommandsOnOneConnectionRunInTurn() async throws {
        let conn = try await Lab.connect(2)
        defer { conn.close() }
        let outputs = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<20 {
                group.addTask { try await conn.run("echo \(i)", timeout: .seconds(20)).stdoutText }
            }
            var all: [String] = []
            for try await o in group { all.append(o) }
            return all
        }
        #expect(Set(outputs) == Set((0..<20).map { "\($0)\n" }))
    }
}

/// Relay edge cases on the lab: early exits, cancellation, relays crossing each other.
@Suite("SSH relay edge cases on the lab", .serialized, .enabled(if: !Lab.skipRequested, "MIGPLAN_SKIP_LAB=1 is set"))
struct LabRelayEdgeTests {
    @Test func destinationThatStopsReadingEarlyIsADestinationFailureNotAHang() async throws {
        let src = try await Lab.connect(1)
        let dst = try await Lab.connect(2)
        defer { src.close(); dst.close() }
        let e = await sshError {
            try await SSHRelay.pipe(from: src, command: "head -c 268435456 /dev/zero", to: dst,
                                    command: "head -c 10 > /dev/null", timeout: .seconds(60))
        }
        #expect(e?.kind == .remoteCommandFailed, "\(String(describing: e))")
        #expect(e?.hostName == "instance2")
        #expect(try await src.run("echo ok", timeout: .seconds(10)).stdoutText == "ok\n")
        #expect(try await dst.run("echo ok", timeout: .seconds(10)).stdoutText == "ok\n")
    }

    @Test func cancellingARelayStopsBothSidesAndKeepsTheConnections() async throws {
        let src = try await Lab.connect(1)
        let dst = try await Lab.connect(2)
        defer { src.close(); dst.close() }
        let task = Task { () async -> SSHError? in
            await sshError { try await SSHRelay.pipe(from: src, command: "cat /dev/zero", to: dst, command: "cat > /dev/null") }
        }
        try await Task.sleep(for: .seconds(1))
        let start = ContinuousClock.now
        task.cancel()
        let e = await task.value
        #expect(e?.kind == .cancelled)
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(try await src.run("echo ok", timeout: .seconds(10)).stdoutText == "ok\n")
        #expect(try await dst.run("echo ok", timeout: .seconds(10)).stdoutText == "ok\n")
        // The abandoned `cat /dev/zero` on instance1 ends by itself: sshd closes its stdout (SIGPIPE).
        try await Task.sleep(for: .milliseconds(500))
        let left = try await src.run("ps -eo args | grep -c '^cat /dev/zero$' || true", timeout: .seconds(10))
        #expect(left.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test func relaysInOppositeDirectionsAtOnceDoNotDeadlock() async throws {
        let a = try await Lab.connect(1)
        let b = try await Lab.connect(2)
        defer { a.close(); b.close() }
        async let ab = SSHRelay.pipe(from: a, command: "head -c 67108864 /dev/zero", to: b, command: "wc -c",
                                     bufferSize: 1 << 20, timeout: .seconds(120))
        async let ba = SSHRelay.pipe(from: b, command: "head -c 67108864 /dev/zero", to: a, command: "wc -c",
                                     bufferSize: 1 << 20, timeout: .seconds(120))
        let (r1, r2) = try await (ab, ba)
        #expect(r1.destination.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864")
        #expect(r2.destination.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864")
        #expect(r1.sha256 == r2.sha256)
    }
}
