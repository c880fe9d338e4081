import MigPlanGraph
import MigPlanModel

/// Hand-built plans for compiler tests (no YAML involved).
enum PlanFixtures {
    static let marks = FieldMarks(node: Mark(file: "test.yaml", line: 1, column: 1))

    static func plan(
        flow: Flow, runtime: Runtime = .runc, replicas: Int = 1, containers: [String] = ["app"],
        archive: ArchiveMode = .single, path: TransferPath = .relay, compression: Compression = .zlib(level: 1),
        onFailure: FailurePolicy = .rollback, attempts: Int = 3
    ) -> Plan {
        let hosts = [
            Host(name: "instance1", address: "10.77.0.11", key: "controller", marks: marks),
            Host(name: "instance2", address: "10.77.0.12", key: "controller", marks: marks),
        ]
        let source: ContainerSource = runtime == .runc ? .runcBundle(path: "/var/lib/migplan/bundles/app") : .dockerImage("migplan/app")
        let planContainers = containers.map {
            Container(name: $0, source: source, stateful: flow.isStateful, replicas: replicas, marks: marks)
        }
        let migration = Migration(
            name: "move", containers: containers, from: "instance1", to: "instance2", flow: flow,
            transfer: TransferOptions(compression: compression, archive: archive, path: path, marks: marks),
            retry: RetryPolicy(attempts: attempts, initialBackoff: .milliseconds(500), maxBackoff: .seconds(4), marks: marks),
            onFailure: onFailure, marks: marks)
        return Plan(
            file: "test.yaml", directory: "/tmp", name: "test",
            ssh: SSHSettings(knownHosts: "/tmp/known_hosts", marks: marks),
            keys: [Key(name: "controller", path: "/tmp/key", marks: marks)],
            hosts: hosts, journal: nil, containers: planContainers, migrations: [migration], marks: marks)
    }
}

extension StepGraph {
    /// Position of a forward step in the graph's (topological) order; -1 when absent.
    func position(_ id: StepID) -> Int { steps.firstIndex { $0.id == id } ?? -1 }

    /// True when `later` depends on `earlier`, directly or transitively.
    func dependsTransitively(_ later: StepID, on earlier: StepID) -> Bool {
        let byID = Dictionary(uniqueKeysWithValues: allSteps.map { ($0.id, $0) })
        var queue = byID[later]?.dependsOn ?? []
        var seen = Set<StepID>()
        while let next = queue.popLast() {
            if next == earlier { return true }
            if seen.insert(next).inserted { queue += byID[next]?.dependsOn ?? [] }
        }
        return false
    }

    func ids(ofKind kind: String) -> [StepID] { steps.filter { $0.action.kind == kind }.map(\.id) }
}
