import Foundation
import MigPlanBasics
import MigPlanGraph
import MigPlanModel
import MigPlanSSH

/// The controller's SSH sessions of one run, opened once (by the `ensureSessions` step, before
/// anything is frozen, or at the first use) and reused by every step.
///
/// A host has one or more *lanes* (connections; each runs one operation at a time on its own
/// thread). Lane 0 carries everything that holds a connection (relays, forwardings, parked
/// commands: `connection(_:)`); plain commands (`commandConnection(_:)`) take the open lanes in
/// turn, so that the restores and checks of several containers on one host run side by side
/// instead of queueing behind one another on a single connection.
public actor SessionPool {
    public let plan: Plan
    private let environment: [String: String]
    private let lanes: [String: Int]
    private var open: [String: [Int: SSHConnection]] = [:]
    private var opening: [String: [Int: Task<SSHConnection, any Error>]] = [:]
    private var turn: [String: Int] = [:]
    private var closed = false

    /// `lanes`: connections per host (missing or < 1: one).
    public init(plan: Plan, environment: [String: String] = ProcessInfo.processInfo.environment,
                lanes: [String: Int] = [:]) {
        self.plan = plan
        self.environment = environment
        self.lanes = lanes
    }

    /// How many lanes `hostName` gets.
    public func laneCount(_ hostName: String) -> Int { max(1, lanes[hostName] ?? 1) }

    /// Lanes per host for `graph`: as many as the container steps of one kind that share a host
    /// (the N checkpoints or restores of a multi-user move), at most `parallelism` (the most steps
    /// in flight at once); one for a single container.
    public static func lanes(for graph: StepGraph, parallelism: Int) -> [String: Int] {
        var perKind: [String: [String: Int]] = [:]
        for step in graph.steps {
            guard case .host(let h) = step.location else { continue }
            switch step.action {
            case .checkpoint, .restore, .verifyRunning, .stop, .kill, .start:
                perKind[h, default: [:]][step.action.kind, default: 0] += 1
            default:
                perKind[h, default: [:]][step.action.kind] = 1
            }
        }
        return perKind.mapValues { min(max(1, parallelism), $0.values.max() ?? 1) }
    }

    /// The connection to `hostName` that carries relays, forwardings and parked commands (lane
    /// 0), connecting on first use.
    public func connection(_ hostName: String) async throws -> SSHConnection {
        try await connection(hostName, lane: 0)
    }

    /// The lane that carries the receiving end of relays into `hostName` (never lane 0, never a
    /// command lane): a relay a → b holds a's lane 0 for its sending end, so a relay b → a running
    /// at the same time must not need a's lane 0 for its receiving end, or each would wait for the
    /// other for ever.
    static let receiveLane = -1

    /// The connection for the receiving end of a relay into `hostName` (`receiveLane`).
    public func receivingConnection(_ hostName: String) async throws -> SSHConnection {
        try await connection(hostName, lane: Self.receiveLane)
    }

    /// Opens the receive lane of `hostName` ahead of a relay into it (before the freeze).
    public func openReceiveLane(_ hostName: String) async throws {
        _ = try await connection(hostName, lane: Self.receiveLane)
    }

    /// A connection for one plain command on `hostName`: the open lanes in turn (lane 0 is opened
    /// when none is).
    public func commandConnection(_ hostName: String) async throws -> SSHConnection {
        let ready = (open[hostName] ?? [:]).filter { $0.key >= 0 }.sorted { $0.key < $1.key }.map(\.value)
        guard ready.count > 1 else { return try await connection(hostName, lane: 0) }
        let t = turn[hostName, default: 0]
        turn[hostName] = t &+ 1
        return ready[t % ready.count]
    }

    /// Opens every lane of `hostName` at once (the `ensureSessions` step, before the freeze) and
    /// returns lane 0, which must connect; a further lane that does not (sshd's `MaxStartups`,
    /// say) is left out: plain commands then share the lanes that did.
    public func openLanes(_ hostName: String) async throws -> SSHConnection {
        let count = laneCount(hostName)
        await withTaskGroup(of: Void.self) { group in
            for lane in 1..<max(1, count) {
                group.addTask { _ = try? await self.connection(hostName, lane: lane) }
            }
            group.addTask { _ = try? await self.connection(hostName, lane: 0) }
        }
        return try await connection(hostName, lane: 0)
    }

    private func connection(_ hostName: String, lane: Int) async throws -> SSHConnection {
        if let c = open[hostName]?[lane] { return c }
        if let pending = opening[hostName]?[lane] { return try await pending.value }
        guard let host = plan.host(named: hostName) else {
            throw ActionError(.preflight, host: hostName, "host \(hostName) is not in the plan")
        }
        guard let key = plan.key(named: host.key) else {
            throw ActionError(.preflight, host: hostName, "key \(host.key) is not in the plan")
        }
        let passphrase = key.passphraseEnv.flatMap { environment[$0] }
        if let name = key.passphraseEnv, passphrase == nil {
            throw ActionError(.preflight, host: hostName, "the key \(key.name) needs its passphrase in the environment variable \(name), which is not set")
        }
        let ssh = plan.ssh
        let endpoint = SSHEndpoint(hostName: host.name, address: host.address, port: host.port, user: host.user)
        let algorithms = SSHAlgorithms(ciphers: ssh.ciphers, kex: ssh.kex, macs: ssh.macs, hostKeyTypes: ssh.hostKeyTypes)
        let identity = SSHIdentity(privateKeyPath: key.path, passphrase: passphrase)
        let keepalive: Duration? = ssh.keepalive == .zero ? nil : ssh.keepalive
        let task = Task<SSHConnection, any Error> {
            try await SSHConnection.connect(to: endpoint, algorithms: algorithms, identity: identity,
                                            knownHostsPath: ssh.knownHosts, connectTimeout: ssh.connectTimeout,
                                            keepaliveInterval: keepalive)
        }
        opening[hostName, default: [:]][lane] = task
        do {
            let c = try await task.value
            opening[hostName]?[lane] = nil
            if closed {
                c.close()
                throw ActionError(.transport, host: hostName, "the run's SSH sessions are closed")
            }
            open[hostName, default: [:]][lane] = c
            return c
        } catch {
            opening[hostName]?[lane] = nil
            throw error
        }
    }

    /// How many command lanes (0, 1, ...) to `hostName` are open (the receive lane not counted).
    public func openCount(_ hostName: String) -> Int { (open[hostName] ?? [:]).keys.filter { $0 >= 0 }.count }

    /// Whether a session to `hostName` is open.
    public func isOpen(_ hostName: String) -> Bool { !(open[hostName] ?? [:]).isEmpty }

    /// Drops a broken connection so that the next use reconnects (after a retryable failure).
    /// `broken`: only that connection (another step may already have reconnected); nil: every
    /// lane of the host.
    public func discard(_ hostName: String, broken: SSHConnection? = nil) {
        guard let lanes = open[hostName] else { return }
        for (lane, c) in lanes where broken == nil || c === broken {
            open[hostName]?.removeValue(forKey: lane)
            c.close()
        }
    }

    /// Closes every connection; one still connecting is closed when it is made.
    public func closeAll() {
        closed = true
        for c in open.values.flatMap(\.values) { c.close() }
        open = [:]
    }
}

/// One command run during an attempt, as the journal records it.
public struct CommandEntry: Sendable {
    public var host: String
    public var command: String
    public var exitStatus: Int32?
    public var stdoutTail: String
    public var stderrTail: String
    public var startedAt: Date
    public var duration: Double
    public var error: String?
}

/// Collects the commands each attempt ran (keyed by `stepID#attempt`), for the journal.
public final class CommandRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [String: [CommandEntry]] = [:]

    public init() {}

    public static func key(_ step: String, _ attempt: Int) -> String { "\(step)#\(attempt)" }

    func append(_ entry: CommandEntry, key: String) {
        lock.withLock { entries[key, default: []].append(entry) }
    }

    /// Removes and returns what attempt `attempt` of `step` ran.
    public func take(step: String, attempt: Int) -> [CommandEntry] {
        lock.withLock { entries.removeValue(forKey: Self.key(step, attempt)) ?? [] }
    }
}

/// The attempt a command belongs to (set by the runner around probe/act/verify).
enum AttemptScope {
    @TaskLocal static var key: String?
    /// How long one remote command of the current step may run: a little less than the step's
    /// own timeout, so that a command ends (and says so) before the executor gives up on the step
    /// and its effect becomes unknown.
    @TaskLocal static var commandTimeout: Duration?
    /// Commands of this act stay on the host's first SSH lane: the steps that decide whether
    /// their images fit on tmpfs (checkpoint, unpack, page-server prepare) measure the free room
    /// and then fill it, so two of them on one host must not run side by side.
    @TaskLocal static var firstLane = false
}

/// A `CommandRunner` over a host's SSH connection that records every command.
struct RecordingRunner: CommandRunner {
    let connection: SSHConnection
    let recorder: CommandRecorder
    /// Told about a broken connection, so that the next attempt reconnects.
    let pool: SessionPool?

    var hostName: String { connection.hostName }

    func run(_ command: String, timeout: Duration?) async throws -> CommandOutput {
        let started = Date()
        let clock = ContinuousClock.now
        do {
            let out = try await connection.run(command, timeout: timeout)
            record(command, started, clock, out: out, error: nil)
            return out
        } catch {
            record(command, started, clock, out: nil, error: String(describing: error))
            if error.isRetryable, let pool { await pool.discard(hostName, broken: connection) }
            throw error
        }
    }

    func record(_ command: String, _ started: Date, _ clock: ContinuousClock.Instant, out: CommandOutput?, error: String?) {
        guard let key = AttemptScope.key else { return }
        let elapsed = ContinuousClock.now - clock
        recorder.append(CommandEntry(
            host: hostName, command: command, exitStatus: out?.exitStatus,
            stdoutTail: String(decoding: (out?.stdout ?? []).suffix(2048), as: UTF8.self),
            stderrTail: String(decoding: (out?.stderr ?? []).suffix(2048), as: UTF8.self),
            startedAt: started, duration: seconds(elapsed), error: error), key: key)
    }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}
