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
        let accepted = try Self.check(runs: ["run-b", "run-a"]).check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-a"), ledger: [])
        #expect(accepted.runID == "run-a" && accepted.moveID == String(repeating: "ab", count: 16))
        // The same manifest is refused by a run that resumes nothing of run-a.
        #expect(throws: ManifestRefusal.self) {
            try Self.check(runs: ["run-b"]).check(manifest: bytes, macHex: Self.keys.mac(bytes, runID: "run-a"), ledger: [])
        }
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

    static let moveID = "0123456789abcdef0123456789abcdef"

    @Test func authorizedKeysLineForcesTheReceiveCommandTheSourceAddressAndAnExpiry() {
        let line = DirectTransfer.authorizedKeysLine(publicKey: "ssh-ed25519 AAAAC3Nza migplan-\(Self.moveID)", destinationPath: Self.key.destinationPath,
                                                     keysFile: Self.key.keysFile, sourceAddress: "10.77.0.13", moveID: Self.moveID)
        #expect(line.hasPrefix("restrict,command=\"umask 077; f=/var/lib/migplan/ssh/authorized_keys; q=$(printf '\\042'); "
                               + "exec 9>>${f%/*}/.migplan-keys.lock && flock -w 30 9 || exit 75; "))
        // The key spends itself (its own line, by its comment) before reading stdin, then receives.
        #expect(line.contains("-v k=migplan-\(Self.moveID) "))
        #expect(line.contains("[ ! -e /var/lib/migplan/incoming/m.tar ] && rm -f /var/lib/migplan/incoming/m.tar.part && set -C && exec 3> /var/lib/migplan/incoming/m.tar.part || exit 73; "))
        #expect(line.contains("cat >&3 && exec 3>&- && sha256sum /var/lib/migplan/incoming/m.tar.part | cut -c1-64\","))
        #expect(line.contains(",from=\"10.77.0.13\",expiry-time=\"\(DirectTransfer.expiryPlaceholder)\",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding ssh-ed25519 AAAAC3Nza migplan-\(Self.moveID)"))
        // Nothing in the forced command can end the option early.
        let command = DirectTransfer.receiveCommand(destinationPath: Self.key.destinationPath, keysFile: nil, moveID: Self.moveID)
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
    }

    // The commands below run in a local shell on a temporary keys file (as on the destination).

    /// Runs `script` with bash; returns (exit status, stdout, stderr).
    static func bash(_ script: String, stdin: String = "") throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", script]
        let input = Pipe(), output = Pipe(), error = Pipe()
        p.standardInput = input; p.standardOutput = output; p.standardError = error
        try p.run()
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile(), err = error.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    /// A scratch directory holding `ssh/authorized_keys` (with `keys`) and `incoming/`.
    static func scratch(keys: String) throws -> (dir: String, key: TransferKeyAction) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/ssh", withIntermediateDirectories: true)
        try keys.write(toFile: dir + "/ssh/authorized_keys", atomically: true, encoding: .utf8)
        return (dir, TransferKeyAction(from: "instance3", to: "instance4", sourcePath: "/x/m.tar", destinationPath: dir + "/incoming/m.tar",
                                       keysDir: dir + "/keys", keysFile: dir + "/ssh/authorized_keys"))
    }

    static func line(_ k: TransferKeyAction, id: String = moveID) -> String {
        DirectTransfer.authorizedKeysLine(publicKey: "ssh-ed25519 AAAAC3Nza migplan-\(id)", destinationPath: k.destinationPath,
                                          keysFile: k.keysFile, sourceAddress: "10.77.0.13", moveID: id)
    }

    @Test func installAndRevokeKeepAKeysFileWithoutTrailingNewlineByteForByte() throws {
        // The admin's line names the archive too: only lines that begin with restrict,command=" go.
        let original = "ssh-ed25519 AAAAadmin admin@host\nssh-ed25519 AAAAcontroller exec 3> /tmp/x cat > m.tar.part"
        let (dir, k) = try Self.scratch(keys: original)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let install = try Self.bash(DirectTransfer.installCommand(keysFile: k.keysFile, line: Self.line(k)))
        #expect(install.0 == 0, "\(install.2)")
        let installed = try String(contentsOfFile: k.keysFile!, encoding: .utf8)
        let lines = installed.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 4 && lines[0] + "\n" + lines[1] == original && lines[3].isEmpty, "\(installed)")
        // The destination's own clock, two hours ahead, as sshd's expiry-time reads it.
        let expiry = try #require(lines[2].firstRange(of: "expiry-time=\"").map { lines[2][$0.upperBound...].prefix(12) })
        #expect(expiry.count == 12 && expiry.allSatisfy(\.isNumber), "\(lines[2])")
        #expect(try Self.bash(DirectTransfer.linesAbsentCommand(k)).0 != 0)
        let revoke = try Self.bash(DirectTransfer.removeLinesCommand(k))
        #expect(revoke.0 == 0, "\(revoke.2)")
        // Only the added newline differs from the original.
        #expect(try String(contentsOfFile: k.keysFile!, encoding: .utf8) == original + "\n")
        #expect(try Self.bash(DirectTransfer.linesAbsentCommand(k)).0 == 0)
    }

    @Test func theForcedCommandSpendsItsKeyBeforeReadingAndASecondUseReceivesNothing() throws {
        let original = "ssh-ed25519 AAAAadmin admin@host"
        let (dir, k) = try Self.scratch(keys: original)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try Self.bash(DirectTransfer.installCommand(keysFile: k.keysFile, line: Self.line(k))).0 == 0)
        let receive = DirectTransfer.receiveCommand(destinationPath: k.destinationPath, keysFile: k.keysFile, moveID: Self.moveID)
        let first = try Self.bash(receive, stdin: "archive bytes")
        #expect(first.0 == 0, "\(first.2)")
        #expect(first.1.trimmingCharacters(in: .whitespacesAndNewlines).count == 64)
        #expect(try String(contentsOfFile: k.keysFile!, encoding: .utf8) == original + "\n")
        // A second session with the same key (logged in before the line went) gets nothing.
        try FileManager.default.removeItem(atPath: k.destinationPath + ".part")
        let second = try Self.bash(receive, stdin: "other bytes")
        #expect(second.0 == 77 && second.2.contains("already used"), "\(second)")
        #expect(!FileManager.default.fileExists(atPath: k.destinationPath + ".part"))
        // Another archive's key line (another mark) is not this key's line either.
        #expect(try Self.bash(DirectTransfer.installCommand(keysFile: k.keysFile, line: Self.line(k, id: "ffffffffffffffffffffffffffffffff"))).0 == 0)
        #expect(try Self.bash(receive, stdin: "x").0 == 77)
    }
}