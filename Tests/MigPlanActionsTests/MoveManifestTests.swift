import Foundation
@testable import MigPlanActions
import MigPlanBasics
import MigPlanGraph
import MigPlanModel
import Testing

/// Replay protection without I/O on hosts: the manifest's bytes, its HMAC, the per-run key
/// derivation, the master key file's checks, and every refusal of `ManifestCheck`.
@Suite struct MoveManifestTests {
    static let master = [UInt8](repeating: 7, count: 32)
    static let keys = ManifestKeys(master: master)
    static let created = Date(timeIntervalSince1970: 1_800_000_000)

    static func manifest(runID: String = "run-a", moveID: String = String(repeating: "ab", count: 16)) -> MoveManifest {
        MoveManifest(moveID: moveID, runID: runID, plan: "p", migration: "m", instances: ["m-2", "m-1"],
                     archive: "m.tar.zz", sha256: String(repeating: "0", count: 64), bytes: 1234, created: created)
    }

    static func check(runs: [String] = ["run-a"], moveID: String = String(repeating: "ab", count: 16)) -> ManifestCheck {
        ManifestCheck(keys: keys, acceptedRuns: runs, moveID: moveID, sha256: String(repeating: "0", count: 64),
                      plan: "p", migration: "m", instances: ["m-1", "m-2"], archive: "m.tar.zz")
    }

    @Test func manifestBytesAreCanonicalSortedJSONOnOneLine() throws {
        let bytes = Self.manifest().encoded()
        let text = try #require(String(bytes: bytes, encoding: .utf8))
        #expect(text == #"{"archive":"m.tar.zz","bytes":1234,"created":"2027-01-15T08:00:00Z","instances":["m-1","m-2"],"migration":"m","moveID":"abababababababababababababababab","plan":"p","runID":"run-a","sha256":"0000000000000000000000000000000000000000000000000000000000000000","version":1}"#)
        #expect(try MoveManifest.decode(bytes) == Self.manifest())
        #expect(Self.manifest().encoded() == bytes)
    }

    @Test func moveIDsAreRandom128BitHex() {
        let a = MoveManifest.newMoveID(), b = MoveManifest.newMoveID()
        #expect(a != b)
        #expect(MoveManifest.isMoveID(a) && MoveManifest.isMoveID(b))
        #expect(!MoveManifest.isMoveID("ABABABABABABABABABABABABABABABAB"))
        #expect(!MoveManifest.isMoveID("abab; rm -rf /"))
    }

    @Test func runKeyIsHMACOfTheMasterKeyOverTheLabelAndRunID() {
        #expect(Self.keys.runKey("run-a") == hmacSHA256(key: Self.master, message: Array("migplan-manifest-v1run-a".utf8)))
        #expect(Self.keys.runKey("run-a") != Self.keys.runKey("run-b"))
        #expect(ManifestKeys(master: [UInt8](repeating: 8, count: 32)).runKey("run-a") != Self.keys.runKey("run-a"))
    }

    @Test func macVerifiesOnlyTheExactBytesUnderTheSameRun() {
        let bytes = Self.manifest().encoded()
        let mac = Self.keys.mac(bytes, runID: "run-a")
        #expect(mac.utf8.count == 64)
        #expect(Self.keys.verify(bytes, macHex: mac + "\n", runID: "run-a"))
        #expect(!Self.keys.verify(bytes, macHex: mac, runID: "run-b"))
        #expect(!Self.keys.verify(bytes + [0x20], macHex: mac, runID: "run-a"))
        #expect(!Self.keys.verify(bytes, macHex: String(mac.dropLast()), runID: "run-a"))
    }

    @Test func checkAcceptsThisRunsOwnMove() throws {
        let bytes = Self.manifest().encoded()
        let m = try Self.check().check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-a"), ledger: [])
        #expect(m.moveID == String(repeating: "ab", count: 16))
    }

    @Test func resumedRunAcceptsTheMoveItsPredecessorMade() throws {
        let bytes = Self.manifest(runID: "run-a").encoded()
        _ = try Self.check(runs: ["run-b", "run-a"]).check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-a"), ledger: [])
    }

    @Test func editedManifestIsRefusedByItsMAC() throws {
        let bytes = Self.manifest().encoded()
        let mac = Self.keys.mac(bytes, runID: "run-a")
        var edited = bytes
        edited[edited.firstIndex(of: UInt8(ascii: "1"))!] = UInt8(ascii: "9")  // bytes 1234 -> 9234
        #expect(throws: ManifestRefusal.badMAC) { try Self.check().check(manifest: edited, macHex: mac, ledger: []) }
    }

    @Test func manifestOfAnotherRunIsRefusedEvenWithAValidMAC() throws {
        let bytes = Self.manifest(runID: "run-old").encoded()
        #expect(throws: ManifestRefusal.otherRun(found: "run-old", expected: ["run-a"])) {
            try Self.check().check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-old"), ledger: [])
        }
    }

    @Test func manifestOfAnotherMoveOrArchiveIsRefused() throws {
        let other = Self.manifest(moveID: String(repeating: "cd", count: 16)).encoded()
        #expect(throws: ManifestRefusal.self) {
            try Self.check().check(manifest: other, macHex: Self.keys.mac(other, runID: "run-a"), ledger: [])
        }
        var m = Self.manifest()
        m.instances = ["m-1"]
        let fewer = m.encoded()
        #expect(throws: ManifestRefusal.self) {
            try Self.check().check(manifest: fewer, macHex: Self.keys.mac(fewer, runID: "run-a"), ledger: [])
        }
    }

    @Test func moveAlreadyInTheLedgerIsRefusedAsReplay() throws {
        let bytes = Self.manifest().encoded()
        let id = String(repeating: "ab", count: 16)
        #expect(throws: ManifestRefusal.alreadyRestored(moveID: id)) {
            try Self.check().check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-a"), ledger: ["x", id])
        }
    }

    @Test func garbageManifestIsRefusedAsMalformed() {
        #expect(throws: ManifestRefusal.self) { try Self.check().check(manifest: Array("nope".utf8), macHex: "00", ledger: []) }
    }

    // MARK: The master key file

    static func tempDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("mm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test func masterKeyIsCreatedOnFirstUseWithMode0600AndThenReused() throws {
        let d = try Self.tempDir() + "/state"
        defer { try? FileManager.default.removeItem(atPath: (d as NSString).deletingLastPathComponent) }
        let first = try ManifestKeys.load(directory: d)
        let attrs = try FileManager.default.attributesOfItem(atPath: d + "/" + ManifestKeys.fileName)
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect((attrs[.size] as? NSNumber)?.intValue == 32)
        let dirAttrs = try FileManager.default.attributesOfItem(atPath: d)
        #expect((dirAttrs[.posixPermissions] as? NSNumber)?.intValue == 0o700)
        let again = try ManifestKeys.load(directory: d)
        #expect(first.runKey("r") == again.runKey("r"))
    }

    @Test func groupOrWorldReadableMasterKeyIsRefused() throws {
        let d = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: d) }
        _ = try ManifestKeys.load(directory: d)
        let f = d + "/" + ManifestKeys.fileName
        chmod(f, 0o640)
        #expect(throws: ManifestKeyError.self) { try ManifestKeys.load(directory: d) }
        chmod(f, 0o604)
        #expect(throws: ManifestKeyError.self) { try ManifestKeys.load(directory: d) }
    }

    @Test func masterKeyNotOwnedByUsOrASymlinkOrTheWrongSizeIsRefused() throws {
        let d = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: d) }
        let f = d + "/" + ManifestKeys.fileName
        _ = try ManifestKeys.load(directory: d)
        chown(f, 65534, 65534)
        do {
            _ = try ManifestKeys.load(directory: d)
            Issue.record("a key file owned by nobody was accepted")
        } catch {
            #expect(error.description.contains("not by us"))
        }
        unlink(f)
        let real = d + "/real"
        _ = FileManager.default.createFile(atPath: real, contents: Data(repeating: 1, count: 32), attributes: [.posixPermissions: 0o600])
        symlink(real, f)
        #expect(throws: ManifestKeyError.self) { try ManifestKeys.load(directory: d) }
        unlink(f)
        _ = FileManager.default.createFile(atPath: f, contents: Data(repeating: 1, count: 31), attributes: [.posixPermissions: 0o600])
        #expect(throws: ManifestKeyError.self) { try ManifestKeys.load(directory: d) }
    }

    @Test func stateDirectoryFollowsMigplanStateDirThenXDGThenHome() {
        #expect(ManifestKeys.stateDirectory(environment: ["MIGPLAN_STATE_DIR": "/s", "XDG_STATE_HOME": "/x", "HOME": "/h"]) == "/s")
        #expect(ManifestKeys.stateDirectory(environment: ["XDG_STATE_HOME": "/x", "HOME": "/h"]) == "/x/migplan")
        #expect(ManifestKeys.stateDirectory(environment: ["HOME": "/h"]) == "/h/.local/state/migplan")
    }
}

/// The one-time key's commands and restrictions, as built (no host involved).
@Suite struct DirectTransferCommandTests {
    static let key = TransferKeyAction(from: "instance3", to: "instance4", sourcePath: "/var/lib/migplan/archives/m.tar",
                                       destinationPath: "/var/lib/migplan/incoming/m.tar", keysDir: "/var/lib/migplan/keys",
                                       keysFile: "/var/lib/migplan/ssh/authorized_keys")

    @Test func authorizedKeysLineForcesTheReceiveCommandAndTheSourceAddress() {
        let line = DirectTransfer.authorizedKeysLine(publicKey: "ssh-ed25519 AAAAC3Nza migplan-0123", destinationPath: Self.key.destinationPath,
                                                     keysFile: Self.key.keysFile, sourceAddress: "10.77.0.13")
        #expect(line.hasPrefix("restrict,command=\"umask 077; mkdir -p /var/lib/migplan/incoming && "))
        #expect(line.contains("[ ! -e /var/lib/migplan/incoming/m.tar ] && cat > /var/lib/migplan/incoming/m.tar.part && sha256sum /var/lib/migplan/incoming/m.tar.part | cut -c1-64; r=$?; "))
        // The key spends itself: its own line leaves the keys file after the one receive.
        #expect(line.contains("f=/var/lib/migplan/ssh/authorized_keys; exec 9>>${f%/*}/.migplan-keys.lock; flock -w 30 9; "))
        #expect(line.contains("grep -v -F -e 'cat > /var/lib/migplan/incoming/m.tar.part' $f > $t"))
        #expect(line.contains("exit $r\","))
        #expect(line.contains(",from=\"10.77.0.13\",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding ssh-ed25519 AAAAC3Nza migplan-0123"))
        // Nothing in the forced command can end the option early.
        let command = DirectTransfer.receiveCommand(destinationPath: Self.key.destinationPath, keysFile: nil)
        #expect(command.contains("f=$HOME/.ssh/authorized_keys;"))
        #expect(!command.contains("\""))
        #expect(line.contains(DirectTransfer.keyLineMark(destinationPath: Self.key.destinationPath)))
    }

    @Test func clientUsesOnlyTheKeyThePinAndThePlansAlgorithms() {
        let ssh = SSHSettings(ciphers: ["aes256-ctr"], kex: ["diffie-hellman-group-exchange-sha256"], macs: ["hmac-sha2-256"],
                              hostKeyTypes: ["ssh-ed25519"], knownHosts: "/k", marks: FieldMarks(node: Mark(file: "t", line: 1, column: 1)))
        let host = Host(name: "instance4", address: "10.77.0.14", key: "c", marks: FieldMarks(node: Mark(file: "t", line: 1, column: 1)))
        let o = DirectTransfer.sshOptions(keyDir: "/w/keys/ID", ssh: ssh, destination: host).joined(separator: " ")
        for expected in ["-F /dev/null", "IdentitiesOnly=yes -i /w/keys/ID/id", "UserKnownHostsFile=/w/keys/ID/known_hosts",
                         "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes", "BatchMode=yes", "PasswordAuthentication no",
                         "KbdInteractiveAuthentication=no", "Ciphers=aes256-ctr", "MACs=hmac-sha2-256",
                         "KexAlgorithms=diffie-hellman-group-exchange-sha256", "HostKeyAlgorithms=ssh-ed25519",
                         "-p 22 -l root 10.77.0.14"] {
            #expect(o.contains(expected), "\(expected) missing in \(o)")
        }
    }

    @Test func pinHoldsOnlyTheDestinationsPlainKeysOfThePlansTypes() throws {
        let f = FileManager.default.temporaryDirectory.appendingPathComponent("kh-\(UUID().uuidString)").path
        defer { unlink(f) }
        try """
            10.77.0.13 ssh-ed25519 AAAAthree
            10.77.0.14 ssh-ed25519 AAAAfour
            10.77.0.14 ssh-rsa AAAArsa
            @revoked 10.77.0.14 ssh-ed25519 AAAAold
            other,10.77.0.14 ssh-ed25519 AAAAalias
            """.write(toFile: f, atomically: true, encoding: .utf8)
        let host = Host(name: "instance4", address: "10.77.0.14", key: "c", marks: FieldMarks(node: Mark(file: "t", line: 1, column: 1)))
        let pin = try DirectTransfer.pin(knownHostsFile: f, destination: host, hostKeyTypes: ["ssh-ed25519"])
        #expect(pin == "10.77.0.14 ssh-ed25519 AAAAfour\n10.77.0.14 ssh-ed25519 AAAAalias\n")
        let stranger = Host(name: "x", address: "10.77.0.99", key: "c", marks: FieldMarks(node: Mark(file: "t", line: 1, column: 1)))
        #expect(throws: ActionError.self) { try DirectTransfer.pin(knownHostsFile: f, destination: stranger, hostKeyTypes: ["ssh-ed25519"]) }
    }

    @Test func keysFileDefaultsToTheLoginUsersAuthorizedKeys() {
        #expect(DirectTransfer.keysFileWord(nil) == "\"$HOME/.ssh/authorized_keys\"")
        #expect(DirectTransfer.keysFileWord("/var/lib/migplan/ssh/authorized_keys") == "/var/lib/migplan/ssh/authorized_keys")
        #expect(DirectTransfer.installCommand(keysFile: nil, line: "x").contains("mv -f \"$t\" \"$f\""))
        #expect(DirectTransfer.removeLinesCommand(Self.key).contains("grep -v -F -e"))
    }
}
