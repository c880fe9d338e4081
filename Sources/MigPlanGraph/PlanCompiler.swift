import MigPlanModel

/// Compiles a (validated) plan into the step graph the engine runs. Pure: no I/O.
///
/// Paths on hosts, under each host's `runtime.workDir` (`W`), all scoped by migration so no two
/// migrations (or a migration and an instance) can share one:
/// - checkpoint images on the source: `W/checkpoints/MIGRATION/INSTANCE`
/// - archive on the source: `W/archives/MIGRATION.tar[.zz]` (single) or
///   `W/archives/MIGRATION.d/INSTANCE.tar[.zz]` (per container; a file name always ends in
///   `.tar` or `.tar.zz`, a directory in `.d`, so neither can be the other)
/// - archive on the destination: `W/incoming/<same relative path>`
/// - unpacked images on the destination: `W/restore/MIGRATION/INSTANCE` (the unpack step's
///   marker: `W/restore/MIGRATION/.unpacked-<archive file name>`)
///
/// Step ids are `SUBJECT.VERB@WHERE`. Subjects are a migration, an instance, or (per-container
/// archives) `MIGRATION/INSTANCE`, which no plan name can spell (names have no `/`); the verbs of
/// migration-level and archive-level steps are never used for instance-level steps, so a
/// migration named like a container cannot collide with it.
public enum PlanCompiler {
    /// Jitter applied to every plan retry policy (the plan format has no field for it).
    public static let defaultJitter = 0.5

    public static func compile(_ plan: Plan) throws(GraphError) -> StepGraph {
        var steps: [Step] = []
        var rollbacks: [RollbackGroup] = []
        for migration in plan.migrations {
            var compiler = try MigrationCompiler(plan: plan, migration: migration)
            compiler.compile()
            steps += compiler.steps
            rollbacks += compiler.rollbacks
        }
        let graph = StepGraph(plan: plan.name, planFile: plan.file, steps: steps, rollbacks: rollbacks)
        var validated = try graph.validated()
        markOnFailure(&validated)
        return validated
    }

    /// A compile error as a positioned diagnostic (at the plan's `migrations`, the part that
    /// compiled into the graph), for `migplan plan` and `migplan validate`.
    public static func diagnostic(for error: GraphError, in plan: Plan) -> Diagnostic {
        Diagnostic(.error, at: plan.marks["migrations"], path: "migrations", "cannot compile the step graph: \(error)")
    }

    /// Fills each forward step's `onFailure`: the rollback groups that are armed while it runs,
    /// i.e. the step is at or after an `armedBy` step and at or before a `disarmedBy` step.
    static func markOnFailure(_ graph: inout StepGraph) {
        let byID = Dictionary(uniqueKeysWithValues: graph.steps.map { ($0.id, $0) })
        var dependents: [StepID: [StepID]] = [:]
        for step in graph.steps {
            for dependency in step.dependsOn { dependents[dependency, default: []].append(step.id) }
        }
        func closure(from start: [StepID], next: (StepID) -> [StepID]) -> Set<StepID> {
            var seen = Set(start)
            var queue = start
            while let current = queue.popLast() {
                for following in next(current) where seen.insert(following).inserted { queue.append(following) }
            }
            return seen
        }
        var groupsOfStep: [StepID: [String]] = [:]
        for group in graph.rollbacks {
            let after = closure(from: group.armedBy) { dependents[$0] ?? [] }
            let before = closure(from: group.disarmedBy) { byID[$0]?.dependsOn ?? [] }
            for id in after.intersection(before) { groupsOfStep[id, default: []].append(group.id) }
        }
        for index in graph.steps.indices {
            graph.steps[index].onFailure = groupsOfStep[graph.steps[index].id] ?? []
        }
    }
}

/// Builds the steps of one migration.
struct MigrationCompiler {
    let plan: Plan
    let migration: Migration
    let source: Host
    let destination: Host
    let instances: [ContainerInstance]
    let retry: StepRetryPolicy
    var steps: [Step] = []
    var rollbacks: [RollbackGroup] = []

    init(plan: Plan, migration: Migration) throws(GraphError) {
        let place = "migration \"\(migration.name)\""
        guard let source = plan.host(named: migration.from) else {
            throw .unknownReference(kind: "host", name: migration.from, in: place)
        }
        guard let destination = plan.host(named: migration.to) else {
            throw .unknownReference(kind: "host", name: migration.to, in: place)
        }
        var instances: [ContainerInstance] = []
        for name in migration.containers {
            guard let container = plan.container(named: name) else {
                throw .unknownReference(kind: "container", name: name, in: place)
            }
            let names = container.replicaNames
            for (offset, instance) in names.enumerated() {
                instances.append(ContainerInstance(
                    name: instance, container: container.name, runtime: container.runtime.rawValue,
                    replica: names.count > 1 ? offset + 1 : nil))
            }
        }
        self.plan = plan
        self.migration = migration
        self.source = source
        self.destination = destination
        self.instances = instances
        self.retry = StepRetryPolicy(
            attempts: migration.retry.attempts,
            initialBackoffMilliseconds: Self.milliseconds(migration.retry.initialBackoff),
            maxBackoffMilliseconds: Self.milliseconds(migration.retry.maxBackoff),
            multiplier: 2, jitter: PlanCompiler.defaultJitter)
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }

    var runtimes: [String] {
        var seen: [String] = []
        for instance in instances where !seen.contains(instance.runtime) { seen.append(instance.runtime) }
        return seen
    }

    var rollbackEnabled: Bool { migration.onFailure == .rollback }

    func id(_ subject: String, _ verb: String, _ location: StepLocation) -> StepID {
        "\(subject).\(verb)@\(location)"
    }

    mutating func add(
        _ subject: String, _ verb: String, at location: StepLocation, _ action: StepAction,
        after dependencies: [StepID], metrics: [PaperMetric], idempotent: Bool = true
    ) -> StepID {
        let stepID = id(subject, verb, location)
        steps.append(Step(
            id: stepID, location: location, action: action, dependsOn: dependencies,
            idempotentByProbe: idempotent, metrics: metrics, migration: migration.name, retry: retry,
            timeoutSeconds: action.defaultTimeoutSeconds))
        return stepID
    }

    func rollbackStep(
        _ subject: String, _ verb: String, at location: StepLocation, _ action: StepAction, after: [StepID]
    ) -> Step {
        Step(id: id(subject, verb, location), location: location, action: action, dependsOn: after,
             idempotentByProbe: true, metrics: [], migration: migration.name, role: .rollback, retry: retry,
             timeoutSeconds: action.defaultTimeoutSeconds)
    }

    mutating func compile() {
        let src = StepLocation.host(source.name)
        let dst = StepLocation.host(destination.name)
        let stateful = migration.flow.isStateful
        let preflightSource = add(migration.name, "preflight", at: src, .preflight(PreflightAction(
            runtimes: runtimes, criuCheck: stateful, workDir: source.runtime.workDir)),
            after: [], metrics: [])
        let preflightDestination = add(migration.name, "preflight", at: dst, .preflight(PreflightAction(
            runtimes: runtimes, criuCheck: stateful, workDir: destination.runtime.workDir)),
            after: [], metrics: [])
        let sessions = add(migration.name, "sessions", at: .controller,
            .ensureSessions(EnsureSessionsAction(hosts: [source.name, destination.name])),
            after: [preflightSource, preflightDestination], metrics: [.total])
        switch migration.flow {
        case .stateful:
            compileStateful(after: sessions, src: src, dst: dst)
        case .stateless(order: .stopFirst):
            compileStopFirst(after: sessions, src: src, dst: dst)
        case .stateless(order: .startFirst):
            compileStartFirst(after: sessions, src: src, dst: dst)
        }
    }

    // MARK: Stateful

    func imagesDir(_ instance: ContainerInstance) -> String {
        "\(source.runtime.workDir)/checkpoints/\(migration.name)/\(instance.name)"
    }

    func restoreDir(_ instance: ContainerInstance) -> String {
        "\(destination.runtime.workDir)/restore/\(migration.name)/\(instance.name)"
    }

    var compression: CompressionChoice {
        switch migration.transfer.compression {
        case .none: return .none
        case .zlib(let level): return .zlib(level: level)
        }
    }

    func archiveFileName(_ subject: String) -> String {
        compression == .none ? "\(subject).tar" : "\(subject).tar.zz"
    }

    /// One archive: what it holds and where it lives on both hosts.
    struct ArchiveUnit {
        /// Step id subject: the migration (single archive) or `MIGRATION/INSTANCE`.
        var subject: String
        var members: [ContainerInstance]
        var sourceArchive: String
        var destinationArchive: String
        var unpackDir: String

        /// The files a transfer leaves next to the received archive (digest, source stamp,
        /// partial download) and the unpack step's marker: removed with the archive.
        var destinationFiles: [String] {
            let name = destinationArchive.split(separator: "/").last.map(String.init) ?? destinationArchive
            return [destinationArchive, destinationArchive + ".part", destinationArchive + ".sha256",
                    destinationArchive + ".source", destinationArchive + ".manifest", destinationArchive + ".manifest.hmac",
                    "\(unpackDir)/.unpacked-\(name)"]
        }

        var sourceFiles: [String] { [sourceArchive, sourceArchive + ".part"] }
    }

    func archiveUnits() -> [ArchiveUnit] {
        let unpackDir = "\(destination.runtime.workDir)/restore/\(migration.name)"
        func unit(_ subject: String, _ relativePath: String, _ members: [ContainerInstance]) -> ArchiveUnit {
            ArchiveUnit(
                subject: subject, members: members,
                sourceArchive: "\(source.runtime.workDir)/archives/\(relativePath)",
                destinationArchive: "\(destination.runtime.workDir)/incoming/\(relativePath)",
                unpackDir: unpackDir)
        }
        switch migration.transfer.archive {
        case .single:
            return [unit(migration.name, archiveFileName(migration.name), instances)]
        case .perContainer:
            return instances.map {
                unit("\(migration.name)/\($0.name)", "\(migration.name).d/\(archiveFileName($0.name))", [$0])
            }
        }
    }

    mutating func compileStateful(after sessions: StepID, src: StepLocation, dst: StepLocation) {
        if migration.transfer.method == .pageServer { return compilePageServer(after: sessions, src: src, dst: dst) }
        // Archive units: one for the whole migration, or one per instance.
        let units = archiveUnits()
        let route: TransferRoute = migration.transfer.path == .direct ? .direct : .relay
        // `direct`: each archive's one-time key is issued before anything is frozen (no downtime),
        // and arms the rollback like the checkpoint does, so a failed or stopped move revokes it.
        var issuedFor: [String: StepID] = [:]
        if route == .direct {
            for unit in units {
                let issue = add(unit.subject, "issueTransferKey", at: .controller, .issueTransferKey(transferKey(unit)),
                                after: [sessions], metrics: [])
                for member in unit.members { issuedFor[member.name] = issue }
            }
        }
        var checkpoints: [String: StepID] = [:]
        for instance in instances {
            checkpoints[instance.name] = add(instance.name, "checkpoint", at: src,
                .checkpoint(CheckpointAction(instance: instance, imagesDir: imagesDir(instance))),
                after: [sessions] + (issuedFor[instance.name].map { [$0] } ?? []), metrics: [.checkpoint, .downtime, .total])
        }
        var verified: [StepID] = []
        var singleArchive: ArchiveUnit?
        for unit in units {
            let archive = add(unit.subject, "archive", at: src, .archive(ArchiveAction(
                instances: unit.members, imagesDirs: unit.members.map(imagesDir), archivePath: unit.sourceArchive,
                compression: compression)),
                after: unit.members.compactMap { checkpoints[$0.name] }, metrics: [.archive, .downtime, .total])
            let transfer = add(unit.subject, "transfer", at: route == .relay ? .controller : src,
                .transfer(TransferAction(from: source.name, to: destination.name, route: route,
                                         sourcePath: unit.sourceArchive, destinationPath: unit.destinationArchive)),
                after: [archive], metrics: [.transfer, .downtime, .total])
            let digest = add(unit.subject, "verifyDigest", at: dst,
                .verifyDigest(VerifyDigestAction(archivePath: unit.destinationArchive, digestFrom: transfer)),
                after: [transfer], metrics: [.downtime, .total])
            let unpack = add(unit.subject, "unpack", at: dst,
                .unpack(UnpackAction(archivePath: unit.destinationArchive, intoDir: unit.unpackDir,
                                     compression: compression)),
                after: [digest], metrics: [.downtime, .total])
            var unitVerified: [StepID] = []
            for instance in unit.members {
                let restore = add(instance.name, "restore", at: dst,
                    .restore(RestoreAction(instance: instance, imagesDir: restoreDir(instance))),
                    after: [unpack], metrics: [.restore, .downtime, .total])
                let verify = add(instance.name, "verifyRunning", at: dst,
                    .verifyRunning(VerifyRunningAction(instance: instance, checkState: true)),
                    after: [restore], metrics: [.total])
                unitVerified.append(verify)
                let sourcePaths = units.count == 1 ? [imagesDir(instance)] : [imagesDir(instance)] + unit.sourceFiles
                _ = add(instance.name, "cleanupSource", at: src,
                    .cleanupSource(CleanupAction(instances: [instance], paths: sourcePaths)),
                    after: [verify], metrics: [])
                if rollbackEnabled, let checkpoint = checkpoints[instance.name] {
                    rollbacks.append(RollbackGroup(
                        id: "\(instance.name).rollback", migration: migration.name,
                        armedBy: [checkpoint] + (issuedFor[instance.name].map { [$0] } ?? []), disarmedBy: [verify],
                        steps: statefulRollback(instance, unit: unit, src: src, dst: dst)))
                }
            }
            if route == .direct {
                // The key is spent when the transfer ends (the receive command removes its own
                // line); its own step then confirms that and deletes the source's private key and
                // pin, off the downtime path (after the destination is verified; a failed or
                // stopped move does it in its rollback).
                _ = add(unit.subject, "revokeTransferKey", at: .controller, .revokeTransferKey(transferKey(unit)),
                        after: unitVerified.isEmpty ? [transfer] : unitVerified, metrics: [])
            }
            // Once every container of the archive runs verified on the destination, what reached
            // the destination for it (archive, digest, unpacked images, marker) is removed: no
            // memory dump stays at rest, and no later run can mistake it for its own.
            _ = add(unit.subject, "cleanupIncoming", at: dst,
                .cleanupDestination(CleanupAction(
                    instances: [], paths: unit.destinationFiles + unit.members.map(restoreDir))),
                after: unitVerified, metrics: [])
            verified += unitVerified
            if units.count == 1 { singleArchive = unit }
        }
        if let singleArchive {
            // The shared archive goes once every container it holds is verified on the destination.
            _ = add(migration.name, "cleanupArchive", at: src,
                .cleanupSource(CleanupAction(instances: [], paths: singleArchive.sourceFiles)),
                after: verified, metrics: [])
        }
    }

    /// The one-time key of a `direct` transfer of `unit`.
    func transferKey(_ unit: ArchiveUnit) -> TransferKeyAction {
        TransferKeyAction(from: source.name, to: destination.name, sourcePath: unit.sourceArchive,
                          destinationPath: unit.destinationArchive, keysDir: "\(source.runtime.workDir)/keys",
                          keysFile: destination.transferKeysFile)
    }

    /// Undoing one instance's move: remove what reached the destination (the container, its
    /// unpacked images, the received archive with its digest and marker), remove the source's
    /// archive (so a later run can never ship this stale checkpoint), then restore on the source
    /// from its own images and verify it runs.
    func statefulRollback(_ instance: ContainerInstance, unit: ArchiveUnit, src: StepLocation, dst: StepLocation) -> [Step] {
        let cleanup = rollbackStep(instance.name, "cleanupDestination", at: dst,
            .cleanupDestination(CleanupAction(instances: [instance], paths: [restoreDir(instance)] + unit.destinationFiles)),
            after: [])
        let removeArchive = rollbackStep(instance.name, "removeArchive", at: src,
            .cleanupSource(CleanupAction(instances: [], paths: unit.sourceFiles)), after: [])
        let restore = rollbackStep(instance.name, "restoreOnSource", at: src,
            .restoreOnSource(RestoreAction(instance: instance, imagesDir: imagesDir(instance))), after: [cleanup.id])
        let verify = rollbackStep(instance.name, "verifyRunning", at: src,
            .verifyRunning(VerifyRunningAction(instance: instance, checkState: true)), after: [restore.id])
        guard migration.transfer.path == .direct else { return [cleanup, removeArchive, restore, verify] }
        // A `direct` move's one-time key goes whatever happened to the transfer (a step of its
        // own: re-run on resume until the key line and the key directory are gone).
        let revoke = rollbackStep(instance.name, "rollbackTransferKey", at: .controller,
            .revokeTransferKey(transferKey(unit)), after: [])
        return [revoke, cleanup, removeArchive, restore, verify]
    }

    // MARK: Stateless

    mutating func compileStopFirst(after sessions: StepID, src: StepLocation, dst: StepLocation) {
        for instance in instances {
            let kill = add(instance.name, "kill", at: src, .kill(InstanceAction(instance: instance)),
                           after: [sessions], metrics: [.kill, .downtime, .total])
            let start = add(instance.name, "start", at: dst, .start(InstanceAction(instance: instance)),
                            after: [kill], metrics: [.start, .downtime, .total])
            let verify = add(instance.name, "verifyRunning", at: dst,
                .verifyRunning(VerifyRunningAction(instance: instance, checkState: false)),
                after: [start], metrics: [.total])
            _ = add(instance.name, "cleanupSource", at: src,
                .cleanupSource(CleanupAction(instances: [instance], paths: [])), after: [verify], metrics: [])
            if rollbackEnabled {
                let cleanup = rollbackStep(instance.name, "cleanupDestination", at: dst,
                    .cleanupDestination(CleanupAction(instances: [instance], paths: [])), after: [])
                let restart = rollbackStep(instance.name, "start", at: src,
                    .start(InstanceAction(instance: instance)), after: [cleanup.id])
                let check = rollbackStep(instance.name, "verifyRunning", at: src,
                    .verifyRunning(VerifyRunningAction(instance: instance, checkState: false)), after: [restart.id])
                rollbacks.append(RollbackGroup(
                    id: "\(instance.name).rollback", migration: migration.name,
                    armedBy: [kill], disarmedBy: [verify], steps: [cleanup, restart, check]))
            }
        }
    }

    mutating func compileStartFirst(after sessions: StepID, src: StepLocation, dst: StepLocation) {
        for instance in instances {
            let start = add(instance.name, "start", at: dst, .start(InstanceAction(instance: instance)),
                            after: [sessions], metrics: [.start, .total])
            let verify = add(instance.name, "verifyRunning", at: dst,
                .verifyRunning(VerifyRunningAction(instance: instance, checkState: false)),
                after: [start], metrics: [.total])
            let stop = add(instance.name, "stop", at: src, .stop(InstanceAction(instance: instance)),
                           after: [verify], metrics: [.kill, .total])
            _ = add(instance.name, "cleanupSource", at: src,
                .cleanupSource(CleanupAction(instances: [instance], paths: [])), after: [stop], metrics: [])
            if rollbackEnabled {
                // The source keeps running until the destination is verified: undoing means
                // removing what was started on the destination.
                let cleanup = rollbackStep(instance.name, "cleanupDestination", at: dst,
                    .cleanupDestination(CleanupAction(instances: [instance], paths: [])), after: [])
                rollbacks.append(RollbackGroup(
                    id: "\(instance.name).rollback", migration: migration.name,
                    armedBy: [start], disarmedBy: [verify], steps: [cleanup]))
            }
        }
    }
}
