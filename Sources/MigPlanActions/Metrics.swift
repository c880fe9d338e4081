import Foundation
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal

/// Wall-clock times of each step of a run, as the executor reported them.
public struct StepTiming: Sendable, Hashable {
    public var started: Date
    public var ended: Date
    public var outcome: String
    public var outputs: [String: String]
    public var seconds: Double { ended.timeIntervalSince(started) }

    public init(started: Date, ended: Date, outcome: String, outputs: [String: String] = [:]) {
        self.started = started
        self.ended = ended
        self.outcome = outcome
        self.outputs = outputs
    }
}

/// The paper's metrics of one container's move (all durations in seconds).
public struct ContainerMetrics: CarriesPaperMetrics, Sendable, Hashable, Codable {
    public var migration: String
    public var container: String
    public var flow: String
    public var paperMetrics = PaperMetrics()

    public init(migration: String, container: String, flow: String, paperMetrics: PaperMetrics = PaperMetrics()) {
        self.migration = migration
        self.container = container
        self.flow = flow
        self.paperMetrics = paperMetrics
    }

    private enum CodingKeys: String, CodingKey { case migration, container, flow }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        migration = try c.decode(String.self, forKey: .migration)
        container = try c.decode(String.self, forKey: .container)
        flow = try c.decode(String.self, forKey: .flow)
        paperMetrics = try PaperMetrics(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(migration, forKey: .migration)
        try c.encode(container, forKey: .container)
        try c.encode(flow, forKey: .flow)
        try paperMetrics.encode(to: encoder)   // flat, beside the names
    }
}

/// Computes the paper's metrics from step timings, using each step's `metrics` tags: durations of
/// `checkpoint`/`transfer`/`restore`/`kill`/`start` steps; `downtime` and `total` are the span from
/// the first tagged step's start to the last one's end. A whole multi-container move also gets a
/// row for `*`.
public enum MetricsCalculator {
    public static func compute(graph: StepGraph, timings: [StepID: StepTiming]) -> [ContainerMetrics] {
        var rows: [ContainerMetrics] = []
        for migrationName in orderedMigrations(graph) {
            let steps = graph.steps.filter { $0.migration == migrationName }
            let instances = orderedInstances(steps)
            let stateful = steps.contains { if case .checkpoint = $0.action { return true } else { return false } }
            var migrationRows: [ContainerMetrics] = []
            for instance in instances {
                // Steps of this instance: its own, the shared ones that carry it, and migration-wide ones.
                let related = steps.filter { step in
                    let concerned = step.action.instancesConcerned
                    if concerned.contains(where: { $0.name == instance }) { return true }
                    switch step.action {
                    case .transfer, .verifyDigest, .unpack:
                        // Shared archive steps: concern this instance if its archive step does.
                        return archiveMembers(of: step, in: graph).contains(instance)
                    case .ensureSessions: return true
                    default: return false
                    }
                }
                // Only instances whose move completed (the destination verified, changed).
                let verified = related.first { step in
                    if case .verifyRunning = step.action { return true } else { return false }
                }
                guard let verified, timings[verified.id]?.outcome == "changed" else { continue }
                var row = ContainerMetrics(migration: migrationName, container: instance, flow: stateful ? "stateful" : "stateless")
                func sum(_ m: PaperMetric) -> Double? {
                    let t = related.filter { $0.metrics.contains(m) }.compactMap { timings[$0.id] }
                    return t.isEmpty ? nil : t.map(\.seconds).reduce(0, +)
                }
                func span(_ m: PaperMetric) -> Double? {
                    let t = related.filter { $0.metrics.contains(m) }.compactMap { timings[$0.id] }
                    guard let first = t.map(\.started).min(), let last = t.map(\.ended).max() else { return nil }
                    return last.timeIntervalSince(first)
                }
                row.totalMigrationTime = span(.total)
                row.downtime = span(.downtime) ?? (stateful ? nil : 0)
                if stateful {
                    row.checkpointDuration = sum(.checkpoint)
                    row.resumeDuration = sum(.restore)
                    if let transfer = related.first(where: { if case .transfer = $0.action { return true } else { return false } }),
                       let t = timings[transfer.id] {
                        row.fileTransferDuration = t.seconds
                        row.transferSizeBytes = t.outputs["bytes"].flatMap { Int64($0) }
                        if let relay = t.outputs["seconds"].flatMap(Double.init), relay > 0, let b = row.transferSizeBytes {
                            row.uploadSpeedBytesPerSecond = Double(b) / relay
                        } else if let b = row.transferSizeBytes, t.seconds > 0 {
                            row.uploadSpeedBytesPerSecond = Double(b) / t.seconds
                        }
                    }
                } else {
                    row.killDuration = sum(.kill)
                    row.startDuration = sum(.start)
                }
                migrationRows.append(row)
            }
            rows += migrationRows
            if migrationRows.count > 1 {
                rows.append(whole(migrationName, migrationRows, steps: steps, timings: timings))
            }
        }
        return rows
    }

    static func whole(_ migration: String, _ rows: [ContainerMetrics], steps: [Step], timings: [StepID: StepTiming]) -> ContainerMetrics {
        func span(_ m: PaperMetric) -> Double? {
            let t = steps.filter { $0.metrics.contains(m) }.compactMap { timings[$0.id] }
            guard let first = t.map(\.started).min(), let last = t.map(\.ended).max() else { return nil }
            return last.timeIntervalSince(first)
        }
        var row = ContainerMetrics(migration: migration, container: "*", flow: rows[0].flow)
        row.totalMigrationTime = span(.total)
        row.downtime = span(.downtime) ?? rows.compactMap(\.downtime).max()
        row.checkpointDuration = span(.checkpoint)
        row.resumeDuration = span(.restore)
        row.killDuration = span(.kill)
        row.startDuration = span(.start)
        // Transfers: distinct transfer steps (one shared archive, or one per container).
        let transfers = steps.filter { if case .transfer = $0.action { return true } else { return false } }.compactMap { timings[$0.id] }
        if !transfers.isEmpty {
            row.fileTransferDuration = span(.transfer)
            let bytes = transfers.compactMap { $0.outputs["bytes"].flatMap { Int64($0) } }.reduce(0, +)
            row.transferSizeBytes = bytes
            if let d = row.fileTransferDuration, d > 0 { row.uploadSpeedBytesPerSecond = Double(bytes) / d }
        }
        return row
    }

    static func orderedMigrations(_ graph: StepGraph) -> [String] {
        var seen: [String] = []
        for s in graph.steps where !seen.contains(s.migration) { seen.append(s.migration) }
        return seen
    }

    static func orderedInstances(_ steps: [Step]) -> [String] {
        var seen: [String] = []
        for s in steps {
            for i in s.action.instancesConcerned where !seen.contains(i.name) { seen.append(i.name) }
        }
        return seen
    }

    /// The instances in the archive a transfer / verifyDigest / unpack step handles (following
    /// dependencies back to the archive step).
    static func archiveMembers(of step: Step, in graph: StepGraph) -> [String] {
        var queue = step.dependsOn
        var seen = Set<StepID>()
        while let id = queue.first {
            queue.removeFirst()
            guard seen.insert(id).inserted, let s = graph.step(id) else { continue }
            if case .archive(let a) = s.action { return a.instances.map(\.name) }
            queue += s.dependsOn
        }
        return []
    }
}
