// The plan model: plain, Sendable data that `PlanLoader` builds from a YAML file and that the
// validator, the graph compiler and the engine read. Every node keeps the source `Mark` of the
// YAML node it came from (and `marks` for its fields) so diagnostics can point at lines.
//
// Controller-local paths (key files, known_hosts, the journal's CA file) are already resolved:
// `~` and `${VAR}` expanded, relative paths made absolute against the plan file's directory.
// Paths on hosts (bundles, work dirs, runc roots) are kept as written (they must be absolute).

/// A position in a plan file: 1-based line and column (columns count Unicode scalars, as libyaml).
public struct Mark: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    /// `file:line:column`
    public var description: String { "\(file):\(line):\(column)" }

    public static func < (lhs: Mark, rhs: Mark) -> Bool {
        (lhs.file, lhs.line, lhs.column) < (rhs.file, rhs.line, rhs.column)
    }
}

/// Marks of a node's fields, keyed by field name as written in YAML (`"address"`, `"key"`), and for
/// list items by `"field[index]"` (`"containers[0]"`, `"ciphers[1]"`). Missing fields have no mark;
/// `mark(_:)` then falls back to the node's own mark.
public struct FieldMarks: Sendable, Hashable, Codable {
    public var byField: [String: Mark]
    public var node: Mark

    public init(node: Mark, byField: [String: Mark] = [:]) {
        self.node = node
        self.byField = byField
    }

    /// The mark of `field`'s value, or of the node when the field was not written.
    public func mark(_ field: String) -> Mark { byField[field] ?? node }
    public subscript(_ field: String) -> Mark { mark(field) }
}

// MARK: - Plan

/// A whole plan file (`apiVersion: migplan/v1`).
public struct Plan: Sendable, Hashable, Codable {
    /// The only API version this build understands.
    public static let apiVersionV1 = "migplan/v1"

    /// Path of the plan file as given on the command line (used in diagnostics).
    public var file: String
    /// Absolute directory of the plan file: the base of relative controller-local paths.
    public var directory: String
    public var apiVersion: String
    public var name: String
    public var description: String?
    public var ssh: SSHSettings
    /// Named private keys, in file order.
    public var keys: [Key]
    /// Hosts, in file order.
    public var hosts: [Host]
    /// The PostgreSQL journal; nil when the plan has no `journal` section (nothing is journaled).
    public var journal: Journal?
    /// Containers, in file order.
    public var containers: [Container]
    /// Migrations, in file order.
    public var migrations: [Migration]
    /// Mark of the document root and of each top-level field.
    public var marks: FieldMarks

    public init(file: String, directory: String, apiVersion: String = Plan.apiVersionV1, name: String,
                description: String? = nil, ssh: SSHSettings, keys: [Key], hosts: [Host],
                journal: Journal?, containers: [Container], migrations: [Migration], marks: FieldMarks) {
        self.file = file
        self.directory = directory
        self.apiVersion = apiVersion
        self.name = name
        self.description = description
        self.ssh = ssh
        self.keys = keys
        self.hosts = hosts
        self.journal = journal
        self.containers = containers
        self.migrations = migrations
        self.marks = marks
    }

    public var mark: Mark { marks.node }

    public func key(named name: String) -> Key? { keys.first { $0.name == name } }
    public func host(named name: String) -> Host? { hosts.first { $0.name == name } }
    public func container(named name: String) -> Container? { containers.first { $0.name == name } }
    public func migration(named name: String) -> Migration? { migrations.first { $0.name == name } }
}

// MARK: - SSH

/// The algorithm choices applied to every SSH connection of the plan, in preference order.
public struct SSHSettings: Sendable, Hashable, Codable {
    public static let defaultCiphers = ["aes256-ctr"]
    public static let defaultKex = ["diffie-hellman-group-exchange-sha256"]
    public static let defaultMacs = ["hmac-sha2-256"]
    public static let defaultHostKeyTypes = ["ssh-ed25519"]
    public static let defaultConnectTimeout: Duration = .seconds(10)
    public static let defaultKeepalive: Duration = .seconds(15)

    public var ciphers: [String]
    public var kex: [String]
    public var macs: [String]
    public var hostKeyTypes: [String]
    /// Absolute path of the controller's known_hosts file (resolved).
    public var knownHosts: String
    public var connectTimeout: Duration
    /// Interval between keepalive messages; `.zero` disables keepalive.
    public var keepalive: Duration
    /// When true, weak algorithms are warnings instead of errors (never recommended).
    public var allowWeakAlgorithms: Bool
    /// `knownHosts` as diagnostics may show it (`${VAR}` unexpanded); nil = `knownHosts`.
    public var knownHostsForDisplay: String?
    public var marks: FieldMarks

    public init(ciphers: [String] = SSHSettings.defaultCiphers, kex: [String] = SSHSettings.defaultKex,
                macs: [String] = SSHSettings.defaultMacs, hostKeyTypes: [String] = SSHSettings.defaultHostKeyTypes,
                knownHosts: String, connectTimeout: Duration = SSHSettings.defaultConnectTimeout,
                keepalive: Duration = SSHSettings.defaultKeepalive, allowWeakAlgorithms: Bool = false,
                marks: FieldMarks) {
        self.ciphers = ciphers
        self.kex = kex
        self.macs = macs
        self.hostKeyTypes = hostKeyTypes
        self.knownHosts = knownHosts
        self.connectTimeout = connectTimeout
        self.keepalive = keepalive
        self.allowWeakAlgorithms = allowWeakAlgorithms
        self.marks = marks
    }

    /// The list for one algorithm kind.
    public func algorithms(_ kind: AlgorithmKind) -> [String] {
        switch kind {
        case .cipher: ciphers
        case .kex: kex
        case .mac: macs
        case .hostKey: hostKeyTypes
        }
    }
}

/// The kinds of SSH algorithm a plan chooses (libssh2's method types).
public enum AlgorithmKind: String, Sendable, Hashable, Codable, CaseIterable {
    case cipher, kex, mac, hostKey

    /// The field name in the plan's `ssh` section.
    public var planField: String {
        switch self {
        case .cipher: "ciphers"
        case .kex: "kex"
        case .mac: "macs"
        case .hostKey: "hostKeyTypes"
        }
    }
}

// MARK: - Keys and hosts

/// A named private key of the controller. Public-key authentication is the only kind there is.
public struct Key: Sendable, Hashable, Codable {
    public var name: String
    /// Absolute path of the private key file (resolved).
    public var path: String
    /// NAME of the environment variable holding the passphrase (never the passphrase itself);
    /// nil for a key without passphrase.
    public var passphraseEnv: String?
    /// `path` as diagnostics may show it: as written when it uses `${VAR}` (whose value may be a
    /// secret), else the resolved path. nil = `path`.
    public var pathForDisplay: String?
    public var marks: FieldMarks

    public init(name: String, path: String, passphraseEnv: String? = nil, marks: FieldMarks) {
        self.name = name
        self.path = path
        self.passphraseEnv = passphraseEnv
        self.marks = marks
    }

    public var mark: Mark { marks.node }
}

/// A machine the controller reaches over SSH.
public struct Host: Sendable, Hashable, Codable {
    public static let defaultPort = 22
    public static let defaultUser = "root"

    public var name: String
    /// IP address or DNS name.
    public var address: String
    public var port: Int
    public var user: String
    /// Name of an entry of `Plan.keys`.
    public var key: String
    public var runtime: HostRuntimePaths
    /// The authorized_keys file this host's sshd reads in which `path: direct` moves install their
    /// one-time keys (absolute path on the host); nil = `~/.ssh/authorized_keys` of `user`.
    public var transferKeysFile: String? = nil
    public var marks: FieldMarks

    public init(name: String, address: String, port: Int = Host.defaultPort, user: String = Host.defaultUser,
                key: String, runtime: HostRuntimePaths = HostRuntimePaths(), marks: FieldMarks) {
        self.name = name
        self.address = address
        self.port = port
        self.user = user
        self.key = key
        self.runtime = runtime
        self.marks = marks
    }

    public var mark: Mark { marks.node }

    /// The name known_hosts files use for this host: `addr` on port 22, `[addr]:port` otherwise.
    public var knownHostsName: String { port == 22 ? address : "[\(address)]:\(port)" }
}

/// Per-host overrides of runtime paths (paths on the host, absolute). nil = the runtime's default.
public struct HostRuntimePaths: Sendable, Hashable, Codable {
    public static let defaultWorkDir = "/var/lib/migplan"

    /// `runc --root` (runc's default: /run/runc).
    public var runcRoot: String?
    /// `docker --host` / DOCKER_HOST, e.g. `unix:///run/docker.sock`.
    public var dockerHost: String?
    /// Cgroup parent for containers started on this host.
    public var cgroupParent: String?
    /// migplan's work directory on the host: bundles, checkpoints, archives.
    public var workDir: String
    /// False when this host's runtime cannot checkpoint/restore (no usable CRIU, dockerd without
    /// experimental mode); a stateful migration from or to it is then invalid.
    public var checkpoint: Bool

    public init(runcRoot: String? = nil, dockerHost: String? = nil, cgroupParent: String? = nil,
                workDir: String = HostRuntimePaths.defaultWorkDir, checkpoint: Bool = true) {
        self.runcRoot = runcRoot
        self.dockerHost = dockerHost
        self.cgroupParent = cgroupParent
        self.workDir = workDir
        self.checkpoint = checkpoint
    }

    /// Default bundle directory of a runc container on this host: `<workDir>/bundles/<name>`.
    public func defaultBundle(for container: String) -> String { "\(workDir)/bundles/\(container)" }
}

// MARK: - Journal

/// libpq `sslmode`, weakest first.
public enum SSLMode: String, Sendable, Hashable, Codable, CaseIterable, Comparable {
    case disable, allow, prefer, require
    case verifyCA = "verify-ca"
    case verifyFull = "verify-full"

    private var strength: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (lhs: SSLMode, rhs: SSLMode) -> Bool { lhs.strength < rhs.strength }
    /// True for modes that verify the server certificate.
    public var verifiesServer: Bool { self >= .verifyCA }
}

/// The PostgreSQL journal connection (libpq conninfo without the password).
public struct Journal: Sendable, Hashable, Codable {
    public static let defaultPort = 5432
    public static let defaultSSLMode = SSLMode.verifyFull
    public static let defaultConnectTimeout: Duration = .seconds(10)

    public var host: String
    public var port: Int
    public var dbname: String
    public var user: String
    public var sslmode: SSLMode
    /// Absolute path of the CA certificate (resolved), or nil.
    public var sslrootcert: String?
    /// NAME of the environment variable holding the password (never the password), or nil.
    public var passwordEnv: String?
    public var connectTimeout: Duration
    /// `sslrootcert` as diagnostics may show it (`${VAR}` unexpanded); nil = `sslrootcert`.
    public var sslrootcertForDisplay: String?
    public var marks: FieldMarks

    public init(host: String, port: Int = Journal.defaultPort, dbname: String, user: String,
                sslmode: SSLMode = Journal.defaultSSLMode, sslrootcert: String? = nil, passwordEnv: String? = nil,
                connectTimeout: Duration = Journal.defaultConnectTimeout, marks: FieldMarks) {
        self.host = host
        self.port = port
        self.dbname = dbname
        self.user = user
        self.sslmode = sslmode
        self.sslrootcert = sslrootcert
        self.passwordEnv = passwordEnv
        self.connectTimeout = connectTimeout
        self.marks = marks
    }

    public var mark: Mark { marks.node }

    /// libpq conninfo WITHOUT the password (pass it separately, e.g. as PGPASSWORD or a keyword
    /// appended by the caller). Values are quoted as libpq requires.
    public var conninfoWithoutPassword: String {
        var parts: [(String, String)] = [
            ("host", host), ("port", String(port)), ("dbname", dbname), ("user", user),
            ("sslmode", sslmode.rawValue),
            ("connect_timeout", String(max(1, Int(connectTimeout.components.seconds)))),
        ]
        if let sslrootcert { parts.append(("sslrootcert", sslrootcert)) }
        return parts.map { "\($0.0)=\(Journal.quoteConninfo($0.1))" }.joined(separator: " ")
    }

    /// Quotes a libpq conninfo value: single quotes, backslash-escaping `\` and `'`.
    public static func quoteConninfo(_ value: String) -> String {
        var quoted = "'"
        for character in value {
            if character == "\\" || character == "'" { quoted.append("\\") }
            quoted.append(character)
        }
        return quoted + "'"
    }
}

// MARK: - Containers

/// Container runtimes migplan drives.
public enum Runtime: String, Sendable, Hashable, Codable, CaseIterable {
    case runc, docker

    /// Whether migplan can checkpoint/restore containers of this runtime (with CRIU).
    public var canCheckpoint: Bool {
        switch self {
        case .runc, .docker: true
        }
    }
}

/// What a container runs from; the case fixes the runtime, so a runc container cannot have an image.
public enum ContainerSource: Sendable, Hashable, Codable {
    /// An OCI bundle directory on the host (`config.json` + rootfs), for runc.
    case runcBundle(path: String)
    /// An image reference known to the host's dockerd, e.g. `migplan/face:latest`.
    case dockerImage(String)

    public var runtime: Runtime {
        switch self {
        case .runcBundle: .runc
        case .dockerImage: .docker
        }
    }
}

/// A container the plan moves.
public struct Container: Sendable, Hashable, Codable {
    public var name: String
    public var source: ContainerSource
    /// Command and arguments; nil = the bundle's / image's default.
    public var command: [String]?
    /// Whether the container holds state that must survive the move (checkpoint/restore).
    public var stateful: Bool
    /// Number of instances (one per user session). 1 = the container itself, named `name`;
    /// N > 1 = `name-1` ... `name-N` (see `replicaNames`).
    public var replicas: Int
    public var marks: FieldMarks

    public init(name: String, source: ContainerSource, command: [String]? = nil, stateful: Bool,
                replicas: Int = 1, marks: FieldMarks) {
        self.name = name
        self.source = source
        self.command = command
        self.stateful = stateful
        self.replicas = replicas
        self.marks = marks
    }

    public var mark: Mark { marks.node }
    public var runtime: Runtime { source.runtime }
    /// The bundle path for runc containers, nil for docker.
    public var bundle: String? { if case .runcBundle(let path) = source { path } else { nil } }
    /// The image for docker containers, nil for runc.
    public var image: String? { if case .dockerImage(let image) = source { image } else { nil } }

    /// Names of the running instances: `[name]` or `name-1 ... name-N`.
    public var replicaNames: [String] { Container.replicaNames(name: name, replicas: replicas) }

    /// THE naming rule for replicas, used by every module: `replicas <= 1` → `[name]`,
    /// otherwise `name-1`, `name-2`, ..., `name-N`.
    public static func replicaNames(name: String, replicas: Int) -> [String] {
        replicas <= 1 ? [name] : (1...replicas).map { "\(name)-\($0)" }
    }
}

// MARK: - Migrations

/// Order of a stateless move.
public enum StatelessOrder: String, Sendable, Hashable, Codable, CaseIterable {
    /// Stop on the source, then start on the destination (the paper's order).
    case stopFirst = "stop-first"
    /// Start on the destination, then stop on the source (no downtime; both run briefly).
    case startFirst = "start-first"
}

/// How containers move.
public enum Flow: Sendable, Hashable, Codable {
    /// Checkpoint on the source, transfer, restore on the destination.
    case stateful
    /// Start a fresh container on the destination and stop the source one, in `order`.
    case stateless(order: StatelessOrder)

    public var isStateful: Bool { if case .stateful = self { true } else { false } }
}

/// Compression of checkpoint archives.
public enum Compression: Sendable, Hashable, Codable {
    case none
    /// zlib with level 1...9.
    case zlib(level: Int)

    public static let defaultValue = Compression.zlib(level: 1)
}

/// How checkpoints are archived.
public enum ArchiveMode: String, Sendable, Hashable, Codable, CaseIterable {
    /// One archive for all containers of the migration (the paper).
    case single
    /// One archive per container.
    case perContainer = "per-container"
}

/// Which way the archive travels.
public enum TransferPath: String, Sendable, Hashable, Codable, CaseIterable {
    /// Source → controller → destination, over the controller's two SSH sessions (the paper).
    case relay
    /// Source → destination directly.
    case direct
}

/// How the checkpoint's memory pages travel.
public enum TransferMethod: String, Sendable, Hashable, Codable, CaseIterable {
    /// Checkpoint into files, archive them, move the archive, unpack, restore (the paper).
    case archive
    /// CRIU's page server on the destination receives the pages while the dump runs, through an
    /// SSH tunnel spliced by the controller; only the small rest of the images moves afterwards.
    case pageServer = "page-server"
}

/// Options of the checkpoint transfer.
public struct TransferOptions: Sendable, Hashable, Codable {
    public var compression: Compression
    public var archive: ArchiveMode
    public var path: TransferPath
    /// `archive` (default) or `page-server`.
    public var method: TransferMethod = .archive
    public var marks: FieldMarks

    public init(compression: Compression = .defaultValue, archive: ArchiveMode = .single,
                path: TransferPath = .relay, marks: FieldMarks) {
        self.compression = compression
        self.archive = archive
        self.path = path
        self.marks = marks
    }
}

/// Retries of a failed step (steps are idempotent by probe).
public struct RetryPolicy: Sendable, Hashable, Codable {
    public static let defaultAttempts = 3
    public static let defaultInitialBackoff: Duration = .seconds(1)
    public static let defaultMaxBackoff: Duration = .seconds(30)
    /// The shortest backoff a plan may ask for (0s with 100 attempts would be a hot loop).
    public static let minimumBackoff: Duration = .milliseconds(100)

    /// Total attempts including the first (1 = no retry).
    public var attempts: Int
    /// Wait before the second attempt; doubled each retry up to `maxBackoff`.
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var marks: FieldMarks

    public init(attempts: Int = RetryPolicy.defaultAttempts, initialBackoff: Duration = RetryPolicy.defaultInitialBackoff,
                maxBackoff: Duration = RetryPolicy.defaultMaxBackoff, marks: FieldMarks) {
        self.attempts = attempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.marks = marks
    }

    /// Backoff before attempt `attempt` (2-based: the first retry), capped at `maxBackoff`.
    public func backoff(beforeAttempt attempt: Int) -> Duration {
        guard attempt >= 2 else { return .zero }
        var delay = initialBackoff
        for _ in 2..<attempt {
            delay = delay * 2
            if delay >= maxBackoff { return maxBackoff }
        }
        return min(delay, maxBackoff)
    }
}

/// What happens when a migration fails after its point of no return is not yet passed.
public enum FailurePolicy: String, Sendable, Hashable, Codable, CaseIterable {
    /// Undo: the containers resume (or keep running) on the source. The default.
    case rollback
    /// Leave everything as it is for a human to inspect.
    case none
}

/// One move of containers from one host to another.
public struct Migration: Sendable, Hashable, Codable {
    public var name: String
    /// Names of entries of `Plan.containers` (each with all its replicas).
    public var containers: [String]
    /// Source host name.
    public var from: String
    /// Destination host name.
    public var to: String
    public var flow: Flow
    public var transfer: TransferOptions
    public var retry: RetryPolicy
    public var onFailure: FailurePolicy
    public var marks: FieldMarks

    public init(name: String, containers: [String], from: String, to: String, flow: Flow,
                transfer: TransferOptions, retry: RetryPolicy, onFailure: FailurePolicy = .rollback,
                marks: FieldMarks) {
        self.name = name
        self.containers = containers
        self.from = from
        self.to = to
        self.flow = flow
        self.transfer = transfer
        self.retry = retry
        self.onFailure = onFailure
        self.marks = marks
    }

    public var mark: Mark { marks.node }
}

extension Plan {
    /// The containers of a migration, resolved (unknown names skipped; the validator reports them).
    public func containers(of migration: Migration) -> [Container] {
        migration.containers.compactMap { container(named: $0) }
    }

    /// Every instance name a migration moves, replicas expanded, in order.
    public func instanceNames(of migration: Migration) -> [String] {
        containers(of: migration).flatMap(\.replicaNames)
    }
}

// Unambiguous names for modules that also import Foundation (which has its own `Host`) or that
// define their own `Journal`: `MigPlanModel.Host` works too.
public typealias PlanHost = Host
public typealias PlanKey = Key
public typealias PlanJournal = Journal
public typealias PlanContainer = Container
public typealias PlanMigration = Migration
