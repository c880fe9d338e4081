import Foundation
import MigPlanBasics
@testable import MigPlanSSH
import Testing

/// Pure logic of the SSH layer: no network.
@Suite("SSH layer units")
struct SSHUnitTests {
    private func kexinit(_ lists: [String]) -> [UInt8] {
        var p: [UInt8] = [20] + [UInt8](repeating: 7, count: 16)
        for l in lists + ["none", "none", "", ""] {
            let b = Array(l.utf8)
            p += [UInt8(b.count >> 24 & 0xff), UInt8(b.count >> 16 & 0xff), UInt8(b.count >> 8 & 0xff), UInt8(b.count & 0xff)] + b
        }
        return p + [0, 0, 0, 0, 0]
    }

    @Test func serverKexinitListsAreParsedAndMismatchesNamed() throws {
        let payload = kexinit([
            "curve25519-sha256,diffie-hellman-group-exchange-sha256,ext-info-s,kex-strict-s-v00@openssh.com",
            "ssh-ed25519", "3des-cbc", "3des-cbc", "hmac-sha1", "hmac-sha1",
        ])
        let offer = try #require(ServerOffer(kexinitPayload: payload))
        #expect(offer.kex == ["curve25519-sha256", "diffie-hellman-group-exchange-sha256", "ext-info-s",
                              "kex-strict-s-v00@openssh.com"])
        #expect(offer.ciphersCS == ["3des-cbc"])
        let mismatches = offer.mismatches(.paperDefaults)
        #expect(mismatches.map(\.0) == [.cryptCS, .cryptSC, .macCS, .macSC])
        #expect(mismatches[0].offered == ["3des-cbc"])
        #expect(mismatches[0].allowed == ["aes256-ctr"])
    }

    @Test func truncatedOrForeignKexinitIsRejected() {
        #expect(ServerOffer(kexinitPayload: []) == nil)
        #expect(ServerOffer(kexinitPayload: [21] + [UInt8](repeating: 0, count: 40)) == nil)
        let p = kexinit(["a", "b", "c", "d", "e", "f"])
        #expect(ServerOffer(kexinitPayload: Array(p.prefix(30))) == nil)
    }

    @Test func retryabilityFollowsTheKind() {
        func e(_ k: SSHError.Kind) -> SSHError {
            SSHError(k, hostName: "h", address: "10.0.0.1", port: 22, operation: "op", message: "m")
        }
        for k: SSHError.Kind in [.connectTimeout, .connectionRefused, .hostUnreachable, .connectionLost,
                                 .peerUnresponsive, .commandTimeout] {
            #expect(e(k).isRetryable, "\(k)")
        }
        for k: SSHError.Kind in [.unknownHostKey, .changedHostKey, .noAlgorithmMatch, .unsupportedAlgorithm,
                                 .passwordOnlyServer, .authenticationFailed, .keyFileUnreadable, .cancelled] {
            #expect(!e(k).isRetryable, "\(k)")
        }
    }

    @Test func errorDescriptionNamesHostStepAndLibssh2Message() {
        var err = SSHError(.handshakeFailed, hostName: "instance1", address: "10.77.0.11", port: 2222,
                           operation: "handshake", message: "SSH handshake failed")
        err.libssh2Code = -5
        err.libssh2Message = "Unable to exchange encryption keys"
        #expect(err.description == "ssh instance1 ([10.77.0.11]:2222): handshake: SSH handshake failed "
                + "[libssh2 -5: Unable to exchange encryption keys]")
    }

    @Test func identityDescriptionNeverShowsThePassphrase() {
        let id = SSHIdentity(privateKeyPath: "/k", passphrase: "hunter2")
        #expect(!"\(id)".contains("hunter2"))
        #expect(!String(reflecting: id).contains("hunter2"))
        var dumped = ""
        dump(id, to: &dumped)
        #expect(!dumped.contains("hunter2"))
    }

    @Test func repeatingSourceProducesExactlyTheRequestedBytes() throws {
        let source = RepeatingSource(pattern: [1, 2, 3], total: 10)
        var buffer = [UInt8](repeating: 0, count: 4)
        var all: [UInt8] = []
        while true {
            let n = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
            if n == 0 { break }
            all += buffer[0..<n]
        }
        #expect(all == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    }

    @Test func paperDefaultsAreAllKnownToThisLibssh2() {
        #expect(SSHSupportedAlgorithms.unknownNames(in: .paperDefaults).isEmpty)
        let unknown = SSHSupportedAlgorithms.unknownNames(in: SSHAlgorithms(ciphers: ["aes256-gcm@openssh.com"]))
        #expect(unknown.map(\.name) == ["aes256-gcm@openssh.com"])
    }

    @Test func endpointKnownHostsNameFollowsOpenSSH() {
        #expect(SSHEndpoint(hostName: "a", address: "10.77.0.11").knownHostsName == "10.77.0.11")
        #expect(SSHEndpoint(hostName: "a", address: "127.0.0.1", port: 2222).knownHostsName == "[127.0.0.1]:2222")
    }
}
