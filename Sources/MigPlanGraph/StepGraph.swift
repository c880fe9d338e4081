/// Steps that undo a failed move. The group is armed once any `armedBy` step has acted (it
/// succeeded, or failed — possibly after stopping the container on the source; every rollback
/// step is guarded by its probe, so undoing what did not happen is harmless) and disarmed once
/// every `disarmedBy` step has succeeded (the destination is verified). If the forward path ends
/// (failure, skipped steps, or a stop request) while the group is armed and not disarmed, its
/// steps run, in their own order, once no forward step between `armedBy` and `disarmedBy` (the
/// group's window) is still in flight.
public struct RollbackGroup: Sendable, Hashable, Codable, Identifiable {
    public var id: String
    public var migration: String
    public var armedBy: [StepID]
    public var disarmedBy: [StepID]
    /// Rollback steps; their `dependsOn` refer only to steps of this group.
    public var steps: [Step]

    public init(id: String, migration: String, armedBy: [StepID], disarmedBy: [StepID], steps: [Step]) {
        self.id = id
        self.migration = migration
        self.armedBy = armedBy
        self.disarmedBy = disarmedBy
        self.steps = steps
    }
}

/// The compiled plan: forward steps (a DAG, in a topological order) and rollback groups.
/// Plain data; its JSON form is versioned (`formatVersion`, see docs/plan-graph.md).
public struct StepGraph: Sendable, Hashable, Codable {
    /// Version of the JSON form. Bumped on any incompatible change.
    public static let currentFormatVersion = 1

    public var formatVersion: Int
    /// The plan's `name`.
    public var plan: String
    /// The plan file as given (for messages), or nil for hand-made graphs.
    public var planFile: String?
    /// Forward steps.
    public var steps: [Step]
    /// What runs on failure.
    public var rollbacks: [RollbackGroup]

    public init(plan: String, planFile: String? = nil, steps: [Step], rollbacks: [RollbackGroup] = []) {
        self.formatVersion = StepGraph.currentFormatVersion
        self.plan = plan
        self.planFile = planFile
        self.steps = steps
        self.rollbacks = rollbacks
    }

    /// Every step, forward then rollback.
    public var allSteps: [Step] { steps + rollbacks.flatMap(\.steps) }

    /// A step by id (forward or rollback).
    public func step(_ id: StepID) -> Step? { allSteps.first { $0.id == id } }

    /// Checks the graph's structure: unique ids, no dangling dependency, rollback groups that
    /// only refer to their own steps, no forward step depending on a rollback step, no cycle.
    /// Returns the same graph with forward steps (and each group's steps) in topological order.
    public func validated() throws(GraphError) -> StepGraph {
        var seen = Set<StepID>()
        for step in allSteps {
            if !seen.insert(step.id).inserted { throw .duplicateStep(step.id) }
        }
        let forwardIDs = Set(steps.map(\.id))
        let rollbackIDs = Set(rollbacks.flatMap(\.steps).map(\.id))
        for step in steps {
            for dependency in step.dependsOn where !forwardIDs.contains(dependency) {
                if rollbackIDs.contains(dependency) {
                    throw .unreachable(step: step.id, reason: "depends on rollback step \(dependency), which runs only on failure")
                }
                throw .danglingDependency(step: step.id, missing: dependency)
            }
        }
        var copy = self
        copy.steps = try Self.topologicallySorted(steps)
        for (index, group) in rollbacks.enumerated() {
            let own = Set(group.steps.map(\.id))
            for step in group.steps {
                for dependency in step.dependsOn where !own.contains(dependency) {
                    if forwardIDs.contains(dependency) || rollbackIDs.contains(dependency) {
                        throw .unreachable(step: step.id, reason: "rollback step depends on \(dependency) outside its group \(group.id)")
                    }
                    throw .danglingDependency(step: step.id, missing: dependency)
                }
            }
            for reference in group.armedBy + group.disarmedBy where !forwardIDs.contains(reference) {
                throw .danglingDependency(step: group.id, missing: reference)
            }
            copy.rollbacks[index].steps = try Self.topologicallySorted(group.steps)
        }
        return copy
    }

    /// Kahn's algorithm; among ready steps the one listed first goes first, so the order is
    /// deterministic. A cycle is reported as `a -> b -> c -> a`, blocked steps as unreachable.
    static func topologicallySorted(_ steps: [Step]) throws(GraphError) -> [Step] {
        let index = Dictionary(uniqueKeysWithValues: steps.enumerated().map { ($1.id, $0) })
        var remaining = steps.map { Set($0.dependsOn).count }
        var dependents = Array(repeating: [Int](), count: steps.count)
        for (position, step) in steps.enumerated() {
            for dependency in Set(step.dependsOn) {
                guard let from = index[dependency] else { continue }
                dependents[from].append(position)
            }
        }
        var ready = (0..<steps.count).filter { remaining[$0] == 0 }
        var order: [Int] = []
        while !ready.isEmpty {
            let next = ready.min()!
            ready.removeAll { $0 == next }
            order.append(next)
            for dependent in dependents[next] {
                remaining[dependent] -= 1
                if remaining[dependent] == 0 { ready.append(dependent) }
            }
        }
        if order.count == steps.count { return order.map { steps[$0] } }
        let left = Set(0..<steps.count).subtracting(order)
        if let cycle = findCycle(among: left, steps: steps, index: index) {
            throw .cycle(cycle)
        }
        // Unreachable without a cycle cannot happen with resolved dependencies; be explicit anyway.
        let first = steps[left.min()!]
        throw .unreachable(step: first.id, reason: "its dependencies never complete")
    }

    /// Depth-first search for a cycle among `candidates`, returned as ids with the first repeated
    /// at the end (`[a, b, c, a]`). Starts from the lowest index so the answer is deterministic.
    private static func findCycle(among candidates: Set<Int>, steps: [Step], index: [StepID: Int]) -> [StepID]? {
        var state = [Int: Int]()  // 1 = on stack, 2 = done
        var stack: [Int] = []
        func visit(_ node: Int) -> [StepID]? {
            state[node] = 1
            stack.append(node)
            for dependency in steps[node].dependsOn {
                guard let next = index[dependency], candidates.contains(next) else { continue }
                if state[next] == 1 {
                    let start = stack.firstIndex(of: next)!
                    // Edges point from a step to what it depends on; show them in execution order.
                    // Start from the step listed first, so the same cycle always reads the same.
                    var loop = Array(Array(stack[start...]).reversed())
                    let first = loop.firstIndex(of: loop.min()!)!
                    loop = Array(loop[first...] + loop[..<first])
                    let ids = loop.map { steps[$0].id }
                    return ids + [ids[0]]
                }
                if state[next] == nil, let found = visit(next) { return found }
            }
            stack.removeLast()
            state[node] = 2
            return nil
        }
        for node in candidates.sorted() where state[node] == nil {
            if let found = visit(node) { return found }
        }
        return nil
    }
}

/// Why a plan could not be compiled into a valid step graph.
public enum GraphError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Steps that depend on each other in a loop, in execution order, first repeated at the end.
    case cycle([StepID])
    /// A step names a dependency that is not in the graph.
    case danglingDependency(step: StepID, missing: StepID)
    /// A step that can never run.
    case unreachable(step: StepID, reason: String)
    /// Two steps with one id.
    case duplicateStep(StepID)
    /// The plan refers to something it does not define (the validator reports these first).
    case unknownReference(kind: String, name: String, in: String)

    public var description: String {
        switch self {
        case .cycle(let ids):
            return "step graph has a cycle: " + ids.joined(separator: " -> ")
        case .danglingDependency(let step, let missing):
            return "step \(step) depends on \(missing), which is not in the graph"
        case .unreachable(let step, let reason):
            return "step \(step) is unreachable: \(reason)"
        case .duplicateStep(let id):
            return "two steps have the id \(id)"
        case .unknownReference(let kind, let name, let place):
            return "\(place) refers to unknown \(kind) \"\(name)\""
        }
    }
}
