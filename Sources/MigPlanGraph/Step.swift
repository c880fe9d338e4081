import Foundation

/// A step's identity: stable across runs of the same plan, so a journal can match a resumed run's
/// steps with the previous run's. Form: `SUBJECT.VERB@WHERE`, e.g. `face-1.checkpoint@instance1`.
public typealias StepID = String

/// Where a step runs: on the controller (which holds every credential) or on one plan host
/// (reached over SSH).
public enum StepLocation: Sendable, Hashable, Codable, CustomStringConvertible {
    case controller
    case host(String)

    /// The host name, or `controller`.
    public var description: String {
        switch self {
        case .controller: return "controller"
        case .host(let name): return name
        }
    }

    private enum CodingKeys: String, CodingKey { case kind, name }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .kind) {
        case "controller": self = .controller
        case "host": self = .host(try container.decode(String.self, forKey: .name))
        case let other:
            throw DecodingError.dataCorruptedError(
                forKey: .kind, in: container, debugDescription: "unknown step location kind \"\(other)\"")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .controller:
            try container.encode("controller", forKey: .kind)
        case .host(let name):
            try container.encode("host", forKey: .kind)
            try container.encode(name, forKey: .name)
        }
    }
}

/// The paper's measurements (section 5) a step's duration counts towards.
public enum PaperMetric: String, Sendable, Hashable, Codable, CaseIterable, Comparable {
    /// Checkpoint duration (CRIU dump).
    case checkpoint
    /// Archiving and compressing the checkpoint images.
    case archive
    /// File transfer duration (and, with the bytes moved, upload speed and transfer size).
    case transfer
    /// Resume duration (CRIU restore).
    case restore
    /// Stateless flow: killing the container on the source.
    case kill
    /// Stateless flow: starting the container on the destination.
    case start
    /// Application downtime: from stopping on the source to resuming on the destination.
    case downtime
    /// Total migration time: from the migration's start to the successful resume.
    case total

    public static func < (lhs: PaperMetric, rhs: PaperMetric) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// How often and how patiently a step is retried when it fails with a retryable error.
/// Delay before attempt `n + 1` (n >= 1): `min(maxBackoff, initialBackoff * multiplier^(n-1))`,
/// then reduced by jitter: `delay * (1 - jitter * r)` with `r` uniform in [0, 1).
public struct StepRetryPolicy: Sendable, Hashable, Codable {
    /// Total attempts, the first included (1 = no retry).
    public var attempts: Int
    /// Delay before the second attempt, in milliseconds.
    public var initialBackoffMilliseconds: Int
    /// Upper bound of any delay, in milliseconds.
    public var maxBackoffMilliseconds: Int
    /// Growth factor between successive delays.
    public var multiplier: Double
    /// Fraction (0...1) of each delay that is randomised away.
    public var jitter: Double

    public init(
        attempts: Int, initialBackoffMilliseconds: Int, maxBackoffMilliseconds: Int,
        multiplier: Double = 2, jitter: Double = 0.5
    ) {
        self.attempts = max(1, attempts)
        self.initialBackoffMilliseconds = max(0, initialBackoffMilliseconds)
        self.maxBackoffMilliseconds = max(0, maxBackoffMilliseconds)
        self.multiplier = max(1, multiplier)
        self.jitter = min(1, max(0, jitter))
    }

    /// A single attempt, never retried.
    public static let once = StepRetryPolicy(attempts: 1, initialBackoffMilliseconds: 0, maxBackoffMilliseconds: 0)

    /// The delay before attempt `failedAttempt + 1`, before jitter, in milliseconds.
    public func baseDelayMilliseconds(afterAttempt failedAttempt: Int) -> Double {
        let exponent = Double(max(0, failedAttempt - 1))
        let raw = Double(initialBackoffMilliseconds) * pow(multiplier, exponent)
        return min(Double(maxBackoffMilliseconds), raw)
    }

    /// The delay before attempt `failedAttempt + 1` with jitter applied; `unit` is uniform in [0, 1).
    public func delayMilliseconds(afterAttempt failedAttempt: Int, unit: Double) -> Double {
        baseDelayMilliseconds(afterAttempt: failedAttempt) * (1 - jitter * min(max(unit, 0), 1))
    }
}

/// Whether a step is on the normal path or undoes a failed move.
public enum StepRole: String, Sendable, Hashable, Codable {
    case forward
    case rollback
}

/// One unit of work: plain data, no behaviour. The engine decides how to run each action.
public struct Step: Sendable, Hashable, Codable, Identifiable {
    public var id: StepID
    /// Where it runs.
    public var location: StepLocation
    /// What it does, with the data it needs.
    public var action: StepAction
    /// Steps that must have succeeded (changed or unchanged) before this one starts.
    public var dependsOn: [StepID]
    /// True when a probe can tell whether the step's effect is already there, so re-running
    /// the plan (or resuming a run) never applies it twice.
    public var idempotentByProbe: Bool
    /// The paper's metrics this step's duration counts towards.
    public var metrics: [PaperMetric]
    /// The migration (plan `migrations` entry) this step belongs to.
    public var migration: String
    /// Forward path or rollback path.
    public var role: StepRole
    /// Rollback groups that run if this step fails (or is skipped, or the run stops) while the
    /// group is armed. Informational: the executor decides from `RollbackGroup.armedBy/disarmedBy`.
    public var onFailure: [String]
    /// Retry policy for retryable failures.
    public var retry: StepRetryPolicy
    /// Upper bound of one attempt, in seconds (nil: no bound).
    public var timeoutSeconds: Double?
    /// A gate: a check whose result may have changed since it last passed (preflight,
    /// verifyDigest, verifyRunning). A resumed run never trusts an earlier pass: it acts (re-checks)
    /// these steps again instead of probing them. Runners and the executor both read this flag.
    /// Defaults to `action.isGate`.
    public var reverifyOnResume: Bool

    public init(
        id: StepID, location: StepLocation, action: StepAction, dependsOn: [StepID] = [],
        idempotentByProbe: Bool = true, metrics: [PaperMetric] = [], migration: String = "",
        role: StepRole = .forward, onFailure: [String] = [], retry: StepRetryPolicy = .once,
        timeoutSeconds: Double? = nil, reverifyOnResume: Bool? = nil
    ) {
        self.id = id
        self.location = location
        self.action = action
        self.dependsOn = dependsOn
        self.idempotentByProbe = idempotentByProbe
        self.metrics = metrics
        self.migration = migration
        self.role = role
        self.onFailure = onFailure
        self.retry = retry
        self.timeoutSeconds = timeoutSeconds
        self.reverifyOnResume = reverifyOnResume ?? action.isGate
    }

    private enum CodingKeys: String, CodingKey {
        case id, location, action, dependsOn, idempotentByProbe, metrics, migration, role, onFailure, retry,
             timeoutSeconds, reverifyOnResume
    }

    /// Decodes a step; `reverifyOnResume` may be absent (graphs written before it existed) and then
    /// defaults to `action.isGate`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let action = try c.decode(StepAction.self, forKey: .action)
        self.init(
            id: try c.decode(StepID.self, forKey: .id),
            location: try c.decode(StepLocation.self, forKey: .location),
            action: action,
            dependsOn: try c.decode([StepID].self, forKey: .dependsOn),
            idempotentByProbe: try c.decode(Bool.self, forKey: .idempotentByProbe),
            metrics: try c.decode([PaperMetric].self, forKey: .metrics),
            migration: try c.decode(String.self, forKey: .migration),
            role: try c.decode(StepRole.self, forKey: .role),
            onFailure: try c.decode([String].self, forKey: .onFailure),
            retry: try c.decode(StepRetryPolicy.self, forKey: .retry),
            timeoutSeconds: try c.decodeIfPresent(Double.self, forKey: .timeoutSeconds),
            reverifyOnResume: try c.decodeIfPresent(Bool.self, forKey: .reverifyOnResume))
    }
}
