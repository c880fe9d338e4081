import Foundation
import MigPlanBasics

/// What the controller says about one move (one archive of one run): written next to the
/// received archive as `ARCHIVE.manifest`, authenticated by `ARCHIVE.manifest.hmac` (HMAC-SHA256
/// over the manifest's exact bytes with the run's manifest key, hex). The destination's
/// `verifyDigest` step reads both back and refuses an archive whose manifest does not verify,
/// belongs to another run, names other containers or digest, or whose move was already restored.
public struct MoveManifest: Codable, Sendable, Hashable {
    public static let currentVersion = 1

    public var version: Int
    /// 128-bit random, lowercase hex.
    public var moveID: String
    /// The run that created the move.
    public var runID: String
    public var plan: String
    public var migration: String
    /// The container instances the archive holds (sorted).
    public var instances: [String]
    /// The archive's file name (no directory).
    public var archive: String
    public var sha256: String
    public var bytes: Int64
    /// ISO 8601, UTC.
    public var created: String

    public init(moveID: String, runID: String, plan: String, migration: String, instances: [String], archive: String,
                sha256: String, bytes: Int64, created: Date = Date()) {
        self.version = Self.currentVersion
        self.moveID = moveID
        self.runID = runID
        self.plan = plan
        self.migration = migration
        self.instances = instances.sorted()
        self.archive = archive
        self.sha256 = sha256
        self.bytes = bytes
        let f = ISO8601DateFormatter()
        f.timeZone = TimeZone(identifier: "UTC")
        self.created = f.string(from: created)
    }

    /// A new move id: 16 random bytes, hex.
    public static func newMoveID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    /// Whether `s` looks like a move id (32 lowercase hex digits): anything else never reaches a shell.
    public static func isMoveID(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// The bytes written to the host (and MACed): JSON with sorted keys, no whitespace, one line.
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings and integers cannot fail.
        return Array((try? encoder.encode(self)) ?? Data())
    }

    public static func decode(_ bytes: [UInt8]) throws(ManifestRefusal) -> MoveManifest {
        do {
            return try JSONDecoder().decode(MoveManifest.self, from: Data(bytes))
        } catch {
            throw .malformed("the manifest is not valid JSON of version \(currentVersion)")
        }
    }
}

/// Why an archive's manifest was refused (no key material in any message).
public enum ManifestRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    /// Missing, unreadable or not JSON.
    case malformed(String)
    /// The HMAC does not verify: edited, or not made by this controller.
    case badMAC
    /// Made by a run that is neither this one nor the run being resumed.
    case otherRun(found: String, expected: [String])
    /// Not the move this run made for this archive (move id, digest, names).
    case mismatch(String)
    /// The move id is in the destination's ledger of restored moves: a replay.
    case alreadyRestored(moveID: String)

    public var description: String {
        switch self {
        case .malformed(let why): return "manifest refused: \(why)"
        case .badMAC: return "manifest refused: its HMAC does not verify (edited, or not written by this controller)"
        case .otherRun(let found, let expected):
            return "manifest refused: the archive belongs to run \(found), not to this run (\(expected.joined(separator: " or ")))"
        case .mismatch(let what): return "manifest refused: \(what)"
        case .alreadyRestored(let id): return "manifest refused: move \(id) was already restored on this host (replay)"
        }
    }
}

/// Errors of the controller's manifest key file (never containing the key).
public struct ManifestKeyError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var message: String
    public var description: String { "manifest master key \(path): \(message)" }
}

/// The controller's manifest keys: a 32-byte master key in a file only we can read, created on
/// first use (`MIGPLAN_STATE_DIR`, else `$XDG_STATE_HOME/migplan`, else `~/.local/state/migplan`,
/// file `manifest-master.key`, mode 0600), and per run HMAC(master, "migplan-manifest-v1" + runID).
public struct ManifestKeys: Sendable {
    public static let fileName = "manifest-master.key"
    public static let derivationLabel = "migplan-manifest-v1"
    private let master: [UInt8]

    public init(master: [UInt8]) { self.master = master }

    /// The run's key. Any run's key can be derived here (a resumed run checks its predecessor's).
    public func runKey(_ runID: String) -> [UInt8] {
        hmacSHA256(key: master, message: Array((Self.derivationLabel + runID).utf8))
    }

    public func mac(_ manifest: [UInt8], runID: String) -> String {
        hmacSHA256(key: runKey(runID), message: manifest).map { String(format: "%02x", $0) }.joined()
    }

    /// Constant-time comparison of `macHex` with the manifest's MAC under `runID`'s key.
    public func verify(_ manifest: [UInt8], macHex: String, runID: String) -> Bool {
        let expected = Array(mac(manifest, runID: runID).utf8)
        let given = Array(macHex.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        guard expected.count == given.count else { return false }
        var diff: UInt8 = 0
        for i in expected.indices { diff |= expected[i] ^ given[i] }
        return diff == 0
    }

    /// The controller's state directory.
    public static func stateDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let d = environment["MIGPLAN_STATE_DIR"], !d.isEmpty { return d }
        if let x = environment["XDG_STATE_HOME"], !x.isEmpty { return x + "/migplan" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.local/state/migplan"
    }

    /// Loads the master key from `directory`, creating it (and the directory, 0700) on first use.
    /// Refuses a file that is not ours, is group/world-accessible, or is not 32 bytes.
    public static func load(directory: String = stateDirectory()) throws(ManifestKeyError) -> ManifestKeys {
        let path = directory + "/" + fileName
        var fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            try create(path, directory: directory)
            fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        }
        guard fd >= 0 else {
            let why = errno == ELOOP ? "a symlink; refusing it" : "cannot open: \(String(cString: strerror(errno)))"
            throw ManifestKeyError(path: path, message: why)
        }
        defer { close(fd) }
        // Checked on the descriptor that is read: no gap between the check and the read.
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ManifestKeyError(path: path, message: "cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ManifestKeyError(path: path, message: "not a regular file; refusing it") }
        guard st.st_uid == geteuid() else { throw ManifestKeyError(path: path, message: "owned by uid \(st.st_uid), not by us (uid \(geteuid())); refusing it") }
        guard st.st_mode & 0o077 == 0 else {
            throw ManifestKeyError(path: path, message: String(format: "mode %04o lets others read or write it; refusing it (chmod 600)", st.st_mode & 0o7777))
        }
        var dirStat = stat()
        if stat(directory, &dirStat) == 0, dirStat.st_mode & 0o022 != 0 || dirStat.st_uid != geteuid() {
            throw ManifestKeyError(path: path, message: "its directory \(directory) is writable by others or not ours; refusing it")
        }
        var key = [UInt8](repeating: 0, count: 33)
        let n = key.withUnsafeMutableBytes { read(fd, $0.baseAddress, 33) }
        guard n == 32 else { throw ManifestKeyError(path: path, message: "must hold exactly 32 bytes") }
        return ManifestKeys(master: Array(key.prefix(32)))
    }

    /// Writes a fresh key into a private temporary file, then links it into place: the key file
    /// appears complete or not at all (two controllers starting at once: the second link fails
    /// and that one reads the first one's key).
    private static func create(_ path: String, directory: String) throws(ManifestKeyError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw ManifestKeyError(path: path, message: "cannot create the state directory \(directory)")
        }
        var g = SystemRandomNumberGenerator()
        let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
        let temporary = "\(path).\(getpid()).\(UInt32.random(in: 0...UInt32.max, using: &g)).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ManifestKeyError(path: path, message: "cannot create: \(String(cString: strerror(errno)))") }
        defer { unlink(temporary) }
        let written = key.withUnsafeBytes { write(fd, $0.baseAddress, 32) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == 32, synced else { throw ManifestKeyError(path: path, message: "cannot write the new key") }
        if link(temporary, path) != 0 && errno != EEXIST {
            throw ManifestKeyError(path: path, message: "cannot install the new key: \(String(cString: strerror(errno)))")
        }
    }
}

/// Checks a manifest read back from the destination against what this run expects.
public struct ManifestCheck: Sendable {
    public var keys: ManifestKeys
    /// This run and, on `--resume`, the run whose move is being continued.
    public var acceptedRuns: [String]
    public var moveID: String
    public var sha256: String
    public var plan: String
    public var migration: String
    public var instances: [String]
    public var archive: String

    public init(keys: ManifestKeys, acceptedRuns: [String], moveID: String, sha256: String, plan: String,
                migration: String, instances: [String], archive: String) {
        self.keys = keys
        self.acceptedRuns = acceptedRuns
        self.moveID = moveID
        self.sha256 = sha256
        self.plan = plan
        self.migration = migration
        self.instances = instances.sorted()
        self.archive = archive
    }

    /// Verifies the MAC (with the key of the run the manifest names), then that the run is one we
    /// accept and the manifest describes this move; then that the move was not restored already
    /// (`ledger`: the destination's restored move ids).
    public func check(manifest bytes: [UInt8], macHex: String, ledger: Set<String>) throws(ManifestRefusal) -> MoveManifest {
        let m = try MoveManifest.decode(bytes)
        guard m.version == MoveManifest.currentVersion else { throw .malformed("version \(m.version) is not \(MoveManifest.currentVersion)") }
        guard keys.verify(bytes, macHex: macHex, runID: m.runID) else { throw .badMAC }
        guard acceptedRuns.contains(m.runID) else { throw .otherRun(found: m.runID, expected: acceptedRuns) }
        guard m.moveID == moveID else { throw .mismatch("move \(m.moveID) is not this run's move \(moveID)") }
        guard m.sha256 == sha256 else { throw .mismatch("digest \(m.sha256) is not the transferred \(sha256)") }
        guard m.plan == plan, m.migration == migration else {
            throw .mismatch("made for \(m.plan)/\(m.migration), not \(plan)/\(migration)")
        }
        guard m.instances == instances, m.archive == archive else {
            throw .mismatch("holds \(m.instances.joined(separator: ",")) as \(m.archive), expected \(instances.joined(separator: ",")) as \(archive)")
        }
        guard !ledger.contains(m.moveID) else { throw .alreadyRestored(moveID: m.moveID) }
        return m
    }
}
