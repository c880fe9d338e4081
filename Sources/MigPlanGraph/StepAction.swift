import Foundation

/// One running container on a host: a plan container, or one replica of it (`face-3`).
public struct ContainerInstance: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The container's name on the host (runc id / Docker name), e.g. `face-3`.
    public var name: String
    /// The plan's `containers` key it comes from, e.g. `face`.
    public var container: String
    /// `runc` or `docker`.
    public var runtime: String
    /// 1-based replica number when the container has `replicas` > 1, else nil.
    public var replica: Int?

    public init(name: String, container: String, runtime: String, replica: Int? = nil) {
        self.name = name
        self.container = container
        self.runtime = runtime
        self.replica = replica
    }

    public var description: String { name }
}

/// How a checkpoint archive is compressed. JSON form: `"none"` or `"zlib:LEVEL"`.
public enum CompressionChoice: Sendable, Hashable, Codable, CustomStringConvertible {
    case none
    case zlib(level: Int)

    public var description: String {
        switch self {
        case .none: return "none"
        case .zlib(let level): return "zlib:\(level)"
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        if text == "none" {
            self = .none
        } else if text.hasPrefix("zlib:"), let level = Int(text.dropFirst(5)) {
            self = .zlib(level: level)
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "unknown compression \"\(text)\"")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// The route a checkpoint archive takes from source to destination.
public enum TransferRoute: String, Sendable, Hashable, Codable {
    /// Streamed through the controller: no host holds credentials for another (the default).
    case relay
    /// Source to destination, with a one-time key the controller installs for this move.
    case direct
}

// MARK: - Action payloads

/// Checks a host before anything is frozen: runtimes present, `criu check`, free space.
public struct PreflightAction: Sendable, Hashable, Codable {
    /// Runtimes that must answer (`runc`, `docker`).
    public var runtimes: [String]
    /// Whether `criu check` must pass (stateful moves only).
    public var criuCheck: Bool
    /// Directory whose file system must have room for checkpoint images.
    public var workDir: String
    public init(runtimes: [String], criuCheck: Bool, workDir: String) {
        self.runtimes = runtimes
        self.criuCheck = criuCheck
        self.workDir = workDir
    }
}

/// Opens (or reuses) the controller's SSH sessions to these hosts before any container is frozen.
public struct EnsureSessionsAction: Sendable, Hashable, Codable {
    public var hosts: [String]
    public init(hosts: [String]) { self.hosts = hosts }
}

/// A container's instance, acted upon where the step runs.
public struct InstanceAction: Sendable, Hashable, Codable {
    public var instance: ContainerInstance
    public init(instance: ContainerInstance) { self.instance = instance }
}

/// CRIU checkpoint of a running container into `imagesDir` (the container stops).
public struct CheckpointAction: Sendable, Hashable, Codable {
    public var instance: ContainerInstance
    public var imagesDir: String
    public init(instance: ContainerInstance, imagesDir: String) {
        self.instance = instance
        self.imagesDir = imagesDir
    }
}

/// Packs checkpoint directories into one archive (tar, optionally zlib-compressed).
public struct ArchiveAction: Sendable, Hashable, Codable {
    public var instances: [ContainerInstance]
    public var imagesDirs: [String]
    public var archivePath: String
    public var compression: CompressionChoice
    public init(instances: [ContainerInstance], imagesDirs: [String], archivePath: String, compression: CompressionChoice) {
        self.instances = instances
        self.imagesDirs = imagesDirs
        self.archivePath = archivePath
        self.compression = compression
    }
}

/// Moves an archive from one host to another, hashing it (SHA-256) on the way.
public struct TransferAction: Sendable, Hashable, Codable {
    public var from: String
    public var to: String
    public var route: TransferRoute
    public var sourcePath: String
    public var destinationPath: String
    public init(from: String, to: String, route: TransferRoute, sourcePath: String, destinationPath: String) {
        self.from = from
        self.to = to
        self.route = route
        self.sourcePath = sourcePath
        self.destinationPath = destinationPath
    }
}

/// Recomputes an archive's SHA-256 on the host and compares it with the digest the transfer step
/// produced (its output `sha256`), before anything is unpacked.
public struct VerifyDigestAction: Sendable, Hashable, Codable {
    public var archivePath: String
    public var digestFrom: StepID
    public init(archivePath: String, digestFrom: StepID) {
        self.archivePath = archivePath
        self.digestFrom = digestFrom
    }
}

/// The one-time key of a `direct` transfer: generated on the source (`keyDir`, holding the
/// private key and the destination's pinned host key), its public half installed on the
/// destination in `keysFile` restricted to receiving `destinationPath` from the source's address.
/// Issued and revoked by controller steps; every key of this archive is found by the archive's
/// destination path (in the key line's forced command) and by `keyDir`'s `target` file.
public struct TransferKeyAction: Sendable, Hashable, Codable {
    public var from: String
    public var to: String
    public var sourcePath: String
    public var destinationPath: String
    /// Directory on the source holding one subdirectory per key (`W/keys`).
    public var keysDir: String
    /// The destination's authorized_keys file; nil = `~/.ssh/authorized_keys` of the login user.
    public var keysFile: String?
    public init(from: String, to: String, sourcePath: String, destinationPath: String, keysDir: String, keysFile: String?) {
        self.from = from
        self.to = to
        self.sourcePath = sourcePath
        self.destinationPath = destinationPath
        self.keysDir = keysDir
        self.keysFile = keysFile
    }
}

/// Unpacks an archive into a fresh directory, refusing entries that would land outside it.
public struct UnpackAction: Sendable, Hashable, Codable {
    public var archivePath: String
    public var intoDir: String
    public var compression: CompressionChoice
    public init(archivePath: String, intoDir: String, compression: CompressionChoice) {
        self.archivePath = archivePath
        self.intoDir = intoDir
        self.compression = compression
    }
}

/// CRIU restore of a container from `imagesDir`.
public struct RestoreAction: Sendable, Hashable, Codable {
    public var instance: ContainerInstance
    public var imagesDir: String
    public init(instance: ContainerInstance, imagesDir: String) {
        self.instance = instance
        self.imagesDir = imagesDir
    }
}

/// Confirms a container runs here; with `checkState`, also that its workload kept its state.
public struct VerifyRunningAction: Sendable, Hashable, Codable {
    public var instance: ContainerInstance
    public var checkState: Bool
    public init(instance: ContainerInstance, checkState: Bool) {
        self.instance = instance
        self.checkState = checkState
    }
}

/// Removes what a move left on a host: the container (when not running) and working paths.
public struct CleanupAction: Sendable, Hashable, Codable {
    public var instances: [ContainerInstance]
    public var paths: [String]
    public init(instances: [ContainerInstance], paths: [String]) {
        self.instances = instances
        self.paths = paths
    }
}

extension CleanupAction {
    /// `container face-1, /var/lib/migplan/checkpoints/m/face-1`
    var itemsDescription: String {
        let items = instances.map { "container \($0.name)" } + paths
        return items.isEmpty ? "nothing" : items.joined(separator: ", ")
    }
}

/// `transfer.method: page-server`: one instance's pages go from the source's CRIU dump (`imagesDir`
/// keeps the rest of the images) to a CRIU page server on the destination writing `receiveDir`,
/// through SSH channels spliced by the controller (`docs/page-server.md`).
public struct PageServerAction: Sendable, Hashable, Codable {
    public var instance: ContainerInstance
    public var from: String
    public var to: String
    /// The source's checkpoint directory (everything but the pages).
    public var imagesDir: String
    /// The destination's directory: pages from the page server, then the rest; restored from.
    public var receiveDir: String
    public init(instance: ContainerInstance, from: String, to: String, imagesDir: String, receiveDir: String) {
        self.instance = instance
        self.from = from
        self.to = to
        self.imagesDir = imagesDir
        self.receiveDir = receiveDir
    }
}

// MARK: - The action enum

/// What a step does. JSON form: an object with `"kind"` and the payload's fields side by side.
public enum StepAction: Sendable, Hashable, Codable {
    /// Runtime present, `criu check`, free space.
    case preflight(PreflightAction)
    /// Open SSH sessions to the hosts before freezing anything.
    case ensureSessions(EnsureSessionsAction)
    /// CRIU dump of a container.
    case checkpoint(CheckpointAction)
    /// Tar (+ zlib) of checkpoint images.
    case archive(ArchiveAction)
    /// Move the archive, hashing it.
    case transfer(TransferAction)
    /// Digest check on the receiving host before unpacking.
    case verifyDigest(VerifyDigestAction)
    /// Unpack into a fresh directory.
    case unpack(UnpackAction)
    /// CRIU restore.
    case restore(RestoreAction)
    /// Container runs (with its state).
    case verifyRunning(VerifyRunningAction)
    /// Remove the source's container and images, only after the destination is verified.
    case cleanupSource(CleanupAction)
    /// Stop a container gracefully (start-first stateless flow).
    case stop(InstanceAction)
    /// Kill a container (stop-first stateless flow, as in the paper).
    case kill(InstanceAction)
    /// Start a container from its image or bundle.
    case start(InstanceAction)
    /// Rollback: remove what the move put on the destination.
    case cleanupDestination(CleanupAction)
    /// Rollback: restore the container on the source from its own checkpoint images.
    case restoreOnSource(RestoreAction)
    /// `direct` transfer: a one-time key generated on the source, installed (restricted) on the destination.
    case issueTransferKey(TransferKeyAction)
    /// `direct` transfer: the one-time key removed from the destination, the source's key and pin deleted.
    case revokeTransferKey(TransferKeyAction)
    /// `page-server`: before the freeze, the destination's page server started and the source's
    /// loopback listener (SSH remote forward) opened.
    case pageServerPrepare(PageServerAction)
    /// `page-server`: after the dump, the page server's exit checked, the rest of the images
    /// relayed (validated), the received files' digest recorded.
    case pageServerFinish(PageServerAction)
    /// `page-server` rollback: the pages relayed back from the destination to the source (validated).
    case pageServerReturn(PageServerAction)

    /// The action's name as JSON and text show it.
    public var kind: String {
        switch self {
        case .preflight: return "preflight"
        case .ensureSessions: return "ensureSessions"
        case .checkpoint: return "checkpoint"
        case .archive: return "archive"
        case .transfer: return "transfer"
        case .verifyDigest: return "verifyDigest"
        case .unpack: return "unpack"
        case .restore: return "restore"
        case .verifyRunning: return "verifyRunning"
        case .cleanupSource: return "cleanupSource"
        case .stop: return "stop"
        case .kill: return "kill"
        case .start: return "start"
        case .cleanupDestination: return "cleanupDestination"
        case .restoreOnSource: return "restoreOnSource"
        case .issueTransferKey: return "issueTransferKey"
        case .revokeTransferKey: return "revokeTransferKey"
        case .pageServerPrepare: return "pageServerPrepare"
        case .pageServerFinish: return "pageServerFinish"
        case .pageServerReturn: return "pageServerReturn"
        }
    }

    /// A check whose pass may not hold any more later (runtimes and `criu check`, an archive's
    /// digest, a container running with its state): preflight, verifyDigest, verifyRunning.
    /// A resumed run re-acts these instead of trusting the earlier pass (`Step.reverifyOnResume`).
    public var isGate: Bool {
        switch self {
        case .preflight, .verifyDigest, .verifyRunning: return true
        default: return false
        }
    }

    /// The default bound of one attempt of this kind of action, in seconds: generous enough for
    /// multi-GiB checkpoints over the lab's links, short enough that a hung host cannot stall a
    /// run forever. The compiler puts it into every step's `timeoutSeconds`.
    public var defaultTimeoutSeconds: Double {
        switch self {
        case .preflight: return 120
        case .ensureSessions: return 120
        case .checkpoint: return 900
        case .archive: return 1800
        case .transfer: return 3600
        case .verifyDigest: return 600
        case .unpack: return 1800
        case .restore, .restoreOnSource: return 900
        case .verifyRunning: return 300
        case .cleanupSource, .cleanupDestination: return 300
        case .stop: return 120
        case .kill: return 60
        case .start: return 300
        case .issueTransferKey, .revokeTransferKey: return 120
        case .pageServerPrepare: return 120
        case .pageServerFinish: return 900
        case .pageServerReturn: return 1800
        }
    }

    /// A one-line human description, for the text renderer and logs.
    public var summary: String {
        switch self {
        case .preflight(let a):
            var parts = a.runtimes.map { "\($0) present" }
            if a.criuCheck { parts.append("criu check") }
            parts.append("free space in \(a.workDir)")
            return "preflight: " + parts.joined(separator: ", ")
        case .ensureSessions(let a):
            return "open SSH sessions to " + a.hosts.joined(separator: ", ")
        case .checkpoint(let a):
            return "checkpoint \(a.instance) (\(a.instance.runtime)) into \(a.imagesDir)"
        case .archive(let a):
            return "archive \(a.instances.map(\.name).joined(separator: ", ")) into \(a.archivePath) (\(a.compression))"
        case .transfer(let a):
            return "transfer \(a.sourcePath) from \(a.from) to \(a.to):\(a.destinationPath) (\(a.route.rawValue), SHA-256 on the way)"
        case .verifyDigest(let a):
            return "verify SHA-256 of \(a.archivePath) against \(a.digestFrom)"
        case .unpack(let a):
            return "unpack \(a.archivePath) into fresh \(a.intoDir)"
        case .restore(let a):
            return "restore \(a.instance) (\(a.instance.runtime)) from \(a.imagesDir)"
        case .verifyRunning(let a):
            return "verify \(a.instance) runs" + (a.checkState ? " with its state" : "")
        case .cleanupSource(let a):
            return "remove " + a.itemsDescription
        case .stop(let a):
            return "stop \(a.instance) (\(a.instance.runtime))"
        case .kill(let a):
            return "kill \(a.instance) (\(a.instance.runtime))"
        case .start(let a):
            return "start \(a.instance) (\(a.instance.runtime))"
        case .cleanupDestination(let a):
            return "remove " + a.itemsDescription
        case .restoreOnSource(let a):
            return "restore \(a.instance) (\(a.instance.runtime)) on the source from \(a.imagesDir)"
        case .issueTransferKey(let a):
            return "one-time key on \(a.from) for sending \(a.sourcePath), accepted by \(a.to) only to receive \(a.destinationPath)"
        case .revokeTransferKey(let a):
            return "revoke the one-time keys for \(a.destinationPath) (\(a.to)) and delete them on \(a.from)"
        case .pageServerPrepare(let a):
            return "page server for \(a.instance) on \(a.to) into \(a.receiveDir), listener on \(a.from)'s loopback (SSH remote forward)"
        case .pageServerFinish(let a):
            return "rest of \(a.imagesDir) from \(a.from) to \(a.to):\(a.receiveDir) (relay, validated), digest of the received images"
        case .pageServerReturn(let a):
            return "pages of \(a.instance) back from \(a.to):\(a.receiveDir) to \(a.from):\(a.imagesDir) (relay, validated)"
        }
    }

    private enum KindKey: String, CodingKey { case kind }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: KindKey.self)
        let kind = try container.decode(String.self, forKey: .kind)
        switch kind {
        case "preflight": self = .preflight(try PreflightAction(from: decoder))
        case "ensureSessions": self = .ensureSessions(try EnsureSessionsAction(from: decoder))
        case "checkpoint": self = .checkpoint(try CheckpointAction(from: decoder))
        case "archive": self = .archive(try ArchiveAction(from: decoder))
        case "transfer": self = .transfer(try TransferAction(from: decoder))
        case "verifyDigest": self = .verifyDigest(try VerifyDigestAction(from: decoder))
        case "unpack": self = .unpack(try UnpackAction(from: decoder))
        case "restore": self = .restore(try RestoreAction(from: decoder))
        case "verifyRunning": self = .verifyRunning(try VerifyRunningAction(from: decoder))
        case "cleanupSource": self = .cleanupSource(try CleanupAction(from: decoder))
        case "stop": self = .stop(try InstanceAction(from: decoder))
        case "kill": self = .kill(try InstanceAction(from: decoder))
        case "start": self = .start(try InstanceAction(from: decoder))
        case "cleanupDestination": self = .cleanupDestination(try CleanupAction(from: decoder))
        case "restoreOnSource": self = .restoreOnSource(try RestoreAction(from: decoder))
        case "issueTransferKey": self = .issueTransferKey(try TransferKeyAction(from: decoder))
        case "revokeTransferKey": self = .revokeTransferKey(try TransferKeyAction(from: decoder))
        case "pageServerPrepare": self = .pageServerPrepare(try PageServerAction(from: decoder))
        case "pageServerFinish": self = .pageServerFinish(try PageServerAction(from: decoder))
        case "pageServerReturn": self = .pageServerReturn(try PageServerAction(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .kind, in: container, debugDescription: "unknown step action kind \"\(kind)\"")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: KindKey.self)
        try container.encode(kind, forKey: .kind)
        switch self {
        case .preflight(let a): try a.encode(to: encoder)
        case .ensureSessions(let a): try a.encode(to: encoder)
        case .checkpoint(let a): try a.encode(to: encoder)
        case .archive(let a): try a.encode(to: encoder)
        case .transfer(let a): try a.encode(to: encoder)
        case .verifyDigest(let a): try a.encode(to: encoder)
        case .unpack(let a): try a.encode(to: encoder)
        case .restore(let a): try a.encode(to: encoder)
        case .verifyRunning(let a): try a.encode(to: encoder)
        case .cleanupSource(let a): try a.encode(to: encoder)
        case .stop(let a): try a.encode(to: encoder)
        case .kill(let a): try a.encode(to: encoder)
        case .start(let a): try a.encode(to: encoder)
        case .cleanupDestination(let a): try a.encode(to: encoder)
        case .restoreOnSource(let a): try a.encode(to: encoder)
        case .issueTransferKey(let a): try a.encode(to: encoder)
        case .revokeTransferKey(let a): try a.encode(to: encoder)
        case .pageServerPrepare(let a), .pageServerFinish(let a), .pageServerReturn(let a): try a.encode(to: encoder)
        }
    }
}
