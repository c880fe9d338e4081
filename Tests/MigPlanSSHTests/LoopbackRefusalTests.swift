import Foundation
import MigPlanBasics
@testable import MigPlanSSH
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Refusals against real OpenSSH servers that each test starts on 127.0.0.1 with its own host key.
@Suite("SSH refusals against loopback sshd", .serialized)
struct LoopbackRefusalTests {
    private func fingerprint(ofPublicKeyFile path: String) throws -> String {
        let out = try sh("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", path]).output
        return String(out.split(separator: " ")[1])
    }

    @Test func connectsToLoopbackServerWithExactlyThePlanAlgorithms() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        let server = try LoopbackSSHD("ok", authorizedKeys: [client.key.publicLine])
        defer { server.stop(); client.dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let conn = try await SSHConnection.connect(
            to: server.endpoint, identity: client.identity, knownHostsPath: client.knownHosts,
            connectTimeout: .seconds(5), keepaliveInterval: nil)
        defer { conn.close() }
        let n = conn.negotiatedAlgorithms
        #expect(n.kex == "diffie-hellman-group-exchange-sha256")
        #expect(n.hostKey == "ssh-ed25519")
        #expect(n.cipherClientToServer == "aes256-ctr" && n.cipherServerToClient == "aes256-ctr")
        #expect(n.macClientToServer == "hmac-sha2-256" && n.macServerToClient == "hmac-sha2-256")
        #expect(conn.hostKeyFingerprint == (try fingerprint(ofPublicKeyFile: server.hostKey.publicPath)))
        let out = try await conn.run("echo hello; echo oops >&2; exit 7", timeout: .seconds(10))
        #expect(out.exitStatus == 7)
        #expect(out.stdoutText == "hello\n")
        #expect(out.stderrText == "oops\n")
    }

    @Test func refusesUnknownHostKeyWithFingerprintAndLineToAdd() async throws {
        let client = try LoopbackClient(knownHostsLines: ["10.99.99.99 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJxCX7wzW+q3zDQqQAHDZuSma30wJ+aNsHS01JPesvk"])
        let server = try LoopbackSSHD("unknown", authorizedKeys: [client.key.publicLine])
        defer { server.stop(); client.dir.remove() }

        let error = await sshError {
            try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .unknownHostKey)
        #expect(e.message.contains(try fingerprint(ofPublicKeyFile: server.hostKey.publicPath)))
        #expect(e.message.contains(server.knownHostsLine))
        #expect(!e.isRetryable)
        // The refusal happened before authentication: sshd never saw a publickey attempt.
        let log = try String(contentsOfFile: server.logPath, encoding: .utf8)
        #expect(!log.contains("Accepted publickey"))
    }

    @Test func refusesChangedHostKeyLoudlyWithBothFingerprints() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        let first = try LoopbackSSHD("first", authorizedKeys: [client.key.publicLine])
        let port = first.port
        let oldFingerprint = try fingerprint(ofPublicKeyFile: first.hostKey.publicPath)
        try (first.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)
        first.stop()
        // Same address and port, another host key.
        let second = try LoopbackSSHD("second", authorizedKeys: [client.key.publicLine], port: port)
        defer { second.stop(); client.dir.remove() }
        let newFingerprint = try fingerprint(ofPublicKeyFile: second.hostKey.publicPath)
        #expect(oldFingerprint != newFingerprint)

        let error = await sshError {
            try await SSHConnection.connect(to: second.endpoint, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .changedHostKey)
        #expect(e.message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"))
        #expect(e.message.contains("man-in-the-middle"))
        #expect(e.message.contains(oldFingerprint))
        #expect(e.message.contains(newFingerprint))
        #expect(!e.isRetryable)
    }

    @Test func refusesServerOfferingOnly3desCBCAndNamesWhatItOffered() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        var options = LoopbackSSHD.Options()
        options.ciphers = "3des-cbc"
        let server = try LoopbackSSHD("3des", options: options, authorizedKeys: [client.key.publicLine])
        defer { server.stop(); client.dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let error = await sshError {
            try await SSHConnection.connect(to: server.endpoint, algorithms: .paperDefaults, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .noAlgorithmMatch, "\(e)")
        #expect(e.message.contains("3des-cbc"))
        #expect(e.message.contains("aes256-ctr"))
        #expect(e.message.contains("ciphers"))
        #expect(!e.isRetryable)
    }

    @Test func refusesServerOfferingOnlyHmacSHA1AndNamesWhatItOffered() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        var options = LoopbackSSHD.Options()
        options.macs = "hmac-sha1"
        let server = try LoopbackSSHD("sha1", options: options, authorizedKeys: [client.key.publicLine])
        defer { server.stop(); client.dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let error = await sshError {
            try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .noAlgorithmMatch, "\(e)")
        #expect(e.message.contains("[hmac-sha1]"))
        #expect(e.message.contains("hmac-sha2-256"))
        #expect(e.message.contains("macs"))
    }

    @Test func refusesPasswordOnlyServer() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        var options = LoopbackSSHD.Options()
        options.passwordOnly = true
        let server = try LoopbackSSHD("password", options: options, authorizedKeys: [client.key.publicLine])
        defer { server.stop(); client.dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let error = await sshError {
            try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .passwordOnlyServer, "\(e)")
        #expect(e.message.contains("password"))
        #expect(!e.isRetryable)
    }

    @Test func refusesWrongUserKeyNamingUserHostAndKeyPath() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        let other = try KeyPair(at: client.dir.file("other_ed25519"))
        // The server accepts only `other`; the client offers its own key.
        let server = try LoopbackSSHD("wrongkey", authorizedKeys: [other.publicLine])
        defer { server.stop(); client.dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let error = await sshError {
            try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .authenticationFailed, "\(e)")
        #expect(e.message.contains("root"))
        #expect(e.message.contains(client.key.privatePath))
        #expect(e.message.contains("loopback"))
        #expect(!e.isRetryable)
    }

    @Test func passphraseProtectedKeyAuthenticatesAndWrongPassphraseIsNeverShown() async throws {
        let dir = try TempDir("pass")
        let key = try KeyPair(at: dir.file("id_ed25519"), passphrase: "correct horse battery")
        let client = try LoopbackClient(knownHostsLines: [], key: key)
        let server = try LoopbackSSHD("passphrase", authorizedKeys: [key.publicLine])
        defer { server.stop(); client.dir.remove(); dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)

        let conn = try await SSHConnection.connect(
            to: server.endpoint, identity: SSHIdentity(privateKeyPath: key.privatePath, passphrase: "correct horse battery"),
            knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        #expect(try await conn.run("true", timeout: .seconds(5)).exitStatus == 0)
        conn.close()

        let error = await sshError {
            try await SSHConnection.connect(
                to: server.endpoint, identity: SSHIdentity(privateKeyPath: key.privatePath, passphrase: "s3cret-wrong"),
                knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        }
        let e = try #require(error)
        #expect(e.kind == .keyFileUnreadable || e.kind == .authenticationFailed, "\(e)")
        #expect(!"\(e)".contains("s3cret-wrong"))
        #expect(!"\(SSHIdentity(privateKeyPath: "k", passphrase: "s3cret-wrong"))".contains("s3cret-wrong"))
    }

    @Test func ecdsaUserKeyAuthenticates() async throws {
        let dir = try TempDir("ecdsa")
        let key = try KeyPair(at: dir.file("id_ecdsa"), type: "ecdsa")
        let client = try LoopbackClient(knownHostsLines: [], key: key)
        let server = try LoopbackSSHD("ecdsa", authorizedKeys: [key.publicLine])
        defer { server.stop(); client.dir.remove(); dir.remove() }
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)
        let conn = try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                                   knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        defer { conn.close() }
        #expect(try await conn.run("echo ok", timeout: .seconds(5)).stdoutText == "ok\n")
    }

    @Test func closedLoopbackPortIsRefusedQuickly() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        defer { client.dir.remove() }
        let port = freeLoopbackPort()
        let start = ContinuousClock.now
        let error = await sshError {
            try await SSHConnection.connect(
                to: SSHEndpoint(hostName: "nothing", address: "127.0.0.1", port: port), identity: client.identity,
                knownHostsPath: client.knownHosts, connectTimeout: .seconds(2))
        }
        let e = try #require(error)
        #expect(e.kind == .connectionRefused, "\(e)")
        #expect(e.isRetryable)
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test func serverThatAcceptsTCPButNeverSpeaksTimesOutInsteadOfHanging() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        defer { client.dir.remove() }
        // A listener that never accepts: the kernel completes the TCP handshake, nobody talks.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        #expect(listen(fd, 8) == 0)
        let port = Int(UInt16(bigEndian: addr.sin_port))

        let start = ContinuousClock.now
        let error = await sshError {
            try await SSHConnection.connect(
                to: SSHEndpoint(hostName: "silent", address: "127.0.0.1", port: port), identity: client.identity,
                knownHostsPath: client.knownHosts, connectTimeout: .seconds(2))
        }
        let elapsed = ContinuousClock.now - start
        let e = try #require(error)
        #expect(e.kind == .connectTimeout, "\(e)")
        #expect(e.operation == "handshake")
        #expect(e.isRetryable)
        #expect(elapsed >= .seconds(1.9) && elapsed < .seconds(6), "took \(elapsed)")
    }

    @Test func missingKnownHostsFileIsAClearErrorBeforeAnyConnection() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        defer { client.dir.remove() }
        let error = await sshError {
            try await SSHConnection.connect(
                to: SSHEndpoint(hostName: "x", address: "127.0.0.1", port: 1), identity: client.identity,
                knownHostsPath: client.dir.file("does-not-exist"), connectTimeout: .seconds(2))
        }
        let e = try #require(error)
        #expect(e.kind == .knownHostsUnreadable)
        #expect(e.message.contains("does-not-exist"))
    }

    @Test func algorithmUnknownToLibssh2IsRejectedByName() async throws {
        let client = try LoopbackClient(knownHostsLines: [])
        defer { client.dir.remove() }
        let error = await sshError {
            try await SSHConnection.connect(
                to: SSHEndpoint(hostName: "x", address: "127.0.0.1", port: 1),
                algorithms: SSHAlgorithms(ciphers: ["aes256-ctr", "chacha20-poly1305@openssh.com"]),
                identity: client.identity, knownHostsPath: client.knownHosts, connectTimeout: .seconds(2))
        }
        let e = try #require(error)
        #expect(e.kind == .unsupportedAlgorithm)
        #expect(e.message.contains("chacha20-poly1305@openssh.com"))
    }
}

/// Timeouts, cancellation and dead peers, against a loopback sshd.
@Suite("SSH timeouts and dead peers", .serialized)
struct LoopbackLivenessTests {
    private func start(_ label: String) throws -> (LoopbackSSHD, LoopbackClient) {
        let client = try LoopbackClient(knownHostsLines: [])
        let server = try LoopbackSSHD(label, authorizedKeys: [client.key.publicLine])
        try (server.knownHostsLine + "\n").write(toFile: client.knownHosts, atomically: true, encoding: .utf8)
        return (server, client)
    }

    @Test func commandTimeoutClosesTheChannelAndTheConnectionStaysUsable() async throws {
        let (server, client) = try start("timeout")
        defer { server.stop(); client.dir.remove() }
        let conn = try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                                   knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        defer { conn.close() }
        let start = ContinuousClock.now
        let error = await sshError { try await conn.run("sleep 30", timeout: .seconds(1)) }
        #expect(error?.kind == .commandTimeout)
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(try await conn.run("echo still", timeout: .seconds(5)).stdoutText == "still\n")
    }

    @Test func cancellingTheTaskCancelsTheCommand() async throws {
        let (server, client) = try start("cancel")
        defer { server.stop(); client.dir.remove() }
        let conn = try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                                   knownHostsPath: client.knownHosts, connectTimeout: .seconds(5))
        defer { conn.close() }
        let task = Task { () async -> SSHError? in await sshError { try await conn.run("sleep 30", timeout: nil) } }
        try await Task.sleep(for: .milliseconds(500))
        let start = ContinuousClock.now
        task.cancel()
        let e = await task.value
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(e?.kind == .cancelled)
        #expect(try await conn.run("echo after", timeout: .seconds(5)).stdoutText == "after\n")
    }

    @Test func idleConnectionWithKeepaliveStaysUsable() async throws {
        let (server, client) = try start("idle")
        defer { server.stop(); client.dir.remove() }
        let conn = try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                                   knownHostsPath: client.knownHosts, connectTimeout: .seconds(5),
                                                   keepaliveInterval: .seconds(1))
        defer { conn.close() }
        // Longer than three keepalive intervals without any operation.
        try await Task.sleep(for: .seconds(4))
        #expect(try await conn.run("echo alive", timeout: .seconds(10)).stdoutText == "alive\n")
        // A silent command longer than the dead-peer limit: keepalive answers keep it alive.
        #expect(try await conn.run("sleep 4; echo done", timeout: .seconds(20)).stdoutText == "done\n")
        await conn.disconnect()
    }

    @Test func frozenPeerIsDetectedByKeepalive() async throws {
        let (server, client) = try start("deadpeer")
        defer { server.stop(); client.dir.remove() }
        let conn = try await SSHConnection.connect(to: server.endpoint, identity: client.identity,
                                                   knownHostsPath: client.knownHosts, connectTimeout: .seconds(5),
                                                   keepaliveInterval: .seconds(1))
        defer { conn.close() }
        #expect(try await conn.run("true", timeout: .seconds(5)).exitStatus == 0)
        // Freeze the server's processes for this connection: TCP stays up, SSH says nothing.
        var children: [Int32] = server.childPIDs
        for pid in server.childPIDs { children.append(contentsOf: LoopbackSSHD.descendants(of: pid)) }
        #expect(!children.isEmpty)
        for pid in children { kill(pid, SIGSTOP) }
        defer { for pid in children { kill(pid, SIGCONT); kill(pid, SIGKILL) } }
        let start = ContinuousClock.now
        let error = await sshError { try await conn.run("sleep 60", timeout: .seconds(30)) }
        let elapsed = ContinuousClock.now - start
        #expect(error?.kind == .peerUnresponsive, "\(String(describing: error))")
        #expect(error?.isRetryable == true)
        #expect(elapsed < .seconds(10), "took \(elapsed)")
    }
}

extension LoopbackSSHD {
    static func descendants(of pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        let kids = text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        return kids + kids.flatMap { descendants(of: $0) }
    }
}
