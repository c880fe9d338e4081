import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import MigPlanRuntime
import MigPlanSSH

/// Test hooks: code run just before a step's act (keyed by step id), e.g. to corrupt an archive
/// between transfer and restore. Production runs have none.
public struct FaultHooks: Sendable {
    public typealias Hook = @Sendable (_ step: Step, _ run: @Sendable (_ host: String, _ command: String) async throws -> CommandOutput) async throws -> Void
    public var beforeAct: [StepID: Hook]
    public init(beforeAct: [StepID: Hook] = [:]) { self.beforeAct = beforeAct }
}

/// Where each instance of the plan was found before the run, and what that means.
public struct ConvergenceReport: Sendable {
    public struct Finding: Sendable, Hashable {
        public var migration: String
        public var instance: String
        public var source: String
        public var destination: String
        public var runningOnSource: Bool
        public var runningOnDestination: Bool
    }
    public var findings: [Finding]

    /// Migrations whose every instance already runs on the destination only.
    public var convergedMigrations: Set<String> {
        var byMigration: [String: [Finding]] = [:]
        for f in findings { byMigration[f.migration, default: []].append(f) }
        return Set(byMigration.filter { $0.value.allSatisfy { $0.runningOnDestination && !$0.runningOnSource } }.keys)
    }

    /// Instances on neither host or on both: the plan cannot be applied safely.
    public var problems: [String] {
        findings.compactMap { f in
            if f.runningOnSource && f.runningOnDestination {
                return "\(f.instance) runs on both \(f.source) and \(f.destination); refusing to touch it"
            }
            if !f.runningOnSource && !f.runningOnDestination {
                return "\(f.instance) runs on neither \(f.source) nor \(f.destination); nothing to move"
            }
            return nil
        }
    }
}

/// The real `StepRunner`: every step becomes commands on the plan's hosts over the controller's
/// SSH sessions (one per host per run), built by MigPlanRuntime with every plan value quoted.
public final class LiveStepRunner: StepRunner, @unchecked Sendable {
    public let plan: Plan
    public let graph: StepGraph
    public let sessions: SessionPool
    public let recorder: CommandRecorder
    public let hooks: FaultHooks
    /// Timeout of a remote command outside any step (convergence probes); within a step, see
    /// `AttemptScope.commandTimeout`.
    let defaultCommandTimeout: Duration = .seconds(600)
    var commandTimeout: Duration { AttemptScope.commandTimeout ?? defaultCommandTimeout }
    /// Steps that failed with their effect unknown (timed out, abandoned while a command may
    /// still run on the host): rollback steps on that host wait for such commands to end.
    private var abandoned: [StepID] = []
    private let lock = NSLock()
    private var converged: Set<String> = []
    private var preMoveReports: [String: WorkloadReport] = [:]
    /// Steps whose act this runner started (in this process). On a fresh run, a file found on a
    /// host counts as a step's effect only when this run made it (never a leftover of an earlier
    /// run); a destination that never saw a restore/start in this run cannot run the container.
    private var actedSteps: Set<StepID> = []
    /// Set for `apply --resume`: what the earlier run did on the hosts is not known here.
    public var resumed = false

    public init(plan: Plan, graph: StepGraph, sessions: SessionPool, recorder: CommandRecorder = CommandRecorder(),
                hooks: FaultHooks = FaultHooks()) {
        self.plan = plan
        self.graph = graph
        self.sessions = sessions
        self.recorder = recorder
        self.hooks = hooks
    }

    // MARK: Convergence

    /// Probes where every instance runs (opening the sessions). Migrations whose instances all run
    /// on their destination only are then reported `unchanged` by every step's probe.
    /// `excluding`: migrations never marked converged (a resumed run's moves its predecessor had
    /// started: their steps are re-probed instead).
    public func assessConvergence(markConverged: Bool = true, excluding: Set<String> = []) async throws -> ConvergenceReport {
        var findings: [ConvergenceReport.Finding] = []
        for migration in plan.migrations {
            for container in plan.containers(of: migration) {
                for name in container.replicaNames {
                    let instance = ContainerInstance(name: name, container: container.name, runtime: container.runtime.rawValue)
                    let onSource = try await ops(instance, on: migration.from).isRunning()
                    let onDestination = try await ops(instance, on: migration.to).isRunning()
                    findings.append(.init(migration: migration.name, instance: name, source: migration.from,
                                          destination: migration.to, runningOnSource: onSource,
                                          runningOnDestination: onDestination))
                }
            }
        }
        let report = ConvergenceReport(findings: findings)
        if markConverged {
            let done = report.convergedMigrations.subtracting(excluding)
            lock.withLock { converged = done }
        }
        return report
    }

    private func isConverged(_ step: Step) -> Bool {
        step.role == .forward && lock.withLock { converged.contains(step.migration) }
    }

    // MARK: Plumbing

    func host(_ name: String) throws -> MigPlanModel.Host {
        guard let h = plan.host(named: name) else { throw ActionError(.preflight, host: name, "host \(name) is not in the plan") }
        return h
    }

    func runner(_ hostName: String) async throws -> RecordingRunner {
        do {
            let connection = AttemptScope.firstLane ? try await sessions.connection(hostName)
                                                    : try await sessions.commandConnection(hostName)
            return RecordingRunner(connection: connection, recorder: recorder, pool: sessions)
        } catch {
            throw ActionError.wrap(error, host: hostName)
        }
    }

    func ops(_ instance: ContainerInstance, on hostName: String) async throws -> InstanceRuntime {
        let h = try host(hostName)
        guard let container = plan.container(named: instance.container) else {
            throw ActionError(.preflight, host: hostName, "container \(instance.container) is not in the plan")
        }
        return InstanceRuntime(host: h, runtimeHost: RuntimeHost(runner: try await runner(hostName), timeout: commandTimeout),
                               instance: instance, container: container)
    }

    /// Runs a command on a host; a non-zero exit is returned, not thrown.
    func sh(_ hostName: String, _ command: String, timeout: Duration? = nil) async throws -> CommandOutput {
        let r = try await runner(hostName)
        do {
            return try await r.run(command, timeout: timeout ?? commandTimeout)
        } catch {
            throw ActionError.wrap(error, host: hostName)
        }
    }

    /// Runs a command that must succeed.
    @discardableResult
    func must(_ hostName: String, _ command: String, _ what: String, timeout: Duration? = nil) async throws -> CommandOutput {
        let out = try await sh(hostName, command, timeout: timeout)
        guard out.succeeded else {
            let err = out.stderrTail(maxBytes: 800).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ActionError(.commandFailed, host: hostName, "\(what) failed (exit \(out.exitStatus))\(err.isEmpty ? "" : ": \(err)")")
        }
        return out
    }

    func hostName(of step: Step) throws -> String {
        guard case .host(let name) = step.location else {
            throw ActionError(.preflight, step: step.id, "step \(step.id) must run on a host")
        }
        return name
    }

    func migration(of step: Step) throws -> Migration {
        guard let m = plan.migration(named: step.migration) else {
            throw ActionError(.preflight, step: step.id, "migration \(step.migration) is not in the plan")
        }
        return m
    }

    private func scoped<T: Sendable>(_ context: StepContext, _ body: () async throws -> T) async throws -> T {
        do {
            return try await AttemptScope.$key.withValue(CommandRecorder.key(context.step.id, context.attempt)) {
                try await AttemptScope.$commandTimeout.withValue(Self.commandBudget(for: context.step)) {
                    if context.step.role == .rollback { try await settleAbandonedCommands(before: context.step) }
                    return try await body()
                }
            }
        } catch {
            var e = ActionError.wrap(error, host: nil)
            e.step = context.step.id
            throw e
        }
    }

    /// A remote command's timeout within `step`: the step's timeout less a margin (for the
    /// step's other commands and for reporting), at least 30 s.
    static func commandBudget(for step: Step) -> Duration {
        guard let limit = step.timeoutSeconds, limit > 0 else { return .seconds(600) }
        let budget = max(30, limit - max(15, limit * 0.05))
        return .milliseconds(Int64(min(limit, budget) * 1000))
    }

    /// Records that this runner started a step's act.
    func noteActed(_ id: StepID) {
        _ = lock.withLock { actedSteps.insert(id) }
    }

    // MARK: Abandoned steps

    /// Told by `AbandonedStepObserver` that a step failed with its effect unknown.
    func noteEffectUnknown(_ id: StepID) {
        lock.withLock { abandoned.append(id) }
    }

    /// Steps with an unknown effect so far.
    public var stepsWithUnknownEffect: [StepID] { lock.withLock { abandoned } }

    /// Before a rollback step acts on a host where a step was abandoned (its command may still be
    /// running: a CRIU dump freezing the container, a restore that may yet start it on the
    /// destination), waits until no runc/criu/docker process naming the step's containers runs
    /// there any more, so the rollback does not race it. Fails (naming the step) if they do not end.
    func settleAbandonedCommands(before step: Step) async throws {
        guard case .host(let h) = step.location else { return }
        let names = Set(step.action.instancesConcerned.map(\.name))
        let relevant: [Step] = lock.withLock { abandoned }.compactMap { graph.step($0) }.filter { s in
            let onHost: Bool
            if case .host(let other) = s.location { onHost = other == h } else { onHost = true }
            return onHost && (names.isEmpty || !names.isDisjoint(with: s.action.instancesConcerned.map(\.name)))
        }
        guard !relevant.isEmpty else { return }
        let involved = names.isEmpty ? Set(relevant.flatMap { $0.action.instancesConcerned.map(\.name) }) : names
        guard !involved.isEmpty else { return }
        let patterns = involved.sorted().map { "-e \($0.shellQuoted)" }.joined(separator: " ")
        let check = "ps -eo pid=,args= | grep -E -e ' (runc|criu|docker|tar|gzip)( |$)' -e '/(runc|criu|docker)( |$)' | grep -F -w \(patterns) | grep -v -F -e 'grep ' || true"
        let deadline = ContinuousClock.now + .seconds(360)
        while true {
            let out = try await sh(h, check, timeout: .seconds(30))
            let busy = out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            if busy.isEmpty { return }
            if ContinuousClock.now > deadline {
                throw ActionError(.containerState, host: h, step: step.id,
                                  "\(relevant.map(\.id).joined(separator: ", ")) timed out with its effect unknown and its commands still run on \(h) after 6 minutes: \(busy.prefix(300)); not rolling back over them")
            }
            try await Task.sleep(for: .seconds(1))
        }
    }

    // MARK: StepRunner

    public func probe(_ context: StepContext) async throws -> ProbeResult {
        if isConverged(context.step) { return .done }
        return try await scoped(context) { try await probeStep(context) }
    }

    public func act(_ context: StepContext) async throws -> [String: String] {
        noteActed(context.step.id)
        return try await scoped(context) {
            if let hook = hooks.beforeAct[context.step.id] {
                try await hook(context.step) { host, command in try await self.sh(host, command) }
            }
            return try await AttemptScope.$firstLane.withValue(Self.decidesTmpfs(context.step.action)) {
                try await actStep(context)
            }
        }
    }

    /// Steps that measure the free room on tmpfs and then fill it: they keep to the host's first
    /// SSH lane, one at a time (`AttemptScope.firstLane`).
    static func decidesTmpfs(_ action: StepAction) -> Bool {
        switch action {
        case .checkpoint, .unpack, .pageServerPrepare: return true
        default: return false
        }
    }

    public func verify(_ context: StepContext, outputs: [String: String]) async throws {
        try await scoped(context) { try await verifyStep(context, outputs: outputs) }
    }

    // MARK: Probes

    func probeStep(_ context: StepContext) async throws -> ProbeResult {
        let step = context.step
        switch step.action {
        case .preflight, .ensureSessions, .verifyDigest, .verifyRunning:
            return .needed
        case .pageServerPrepare, .pageServerFinish, .pageServerReturn: return pageServerProbe(context)
        case .checkpoint(let a):
            // First attempt of a fresh run: the convergence check found the container running on
            // the source just before, and the act checks again in its own command.
            if !trustsFilesOf(context) && !resumed { return .needed }
            let h = try hostName(of: step)
            if try await ops(a.instance, on: h).isRunning() { return .needed }
            let out = try await sh(h, "test -f \(a.imagesDir.shellQuoted)/inventory.img")
            return out.succeeded ? .done : .needed
        case .archive(let a):
            // A fresh run trusts only an archive it wrote itself (a leftover of an earlier run may
            // hold an older state); then it must still be newer than every checkpoint it holds.
            guard trustsFilesOf(context) else { return .needed }
            let p = a.archivePath.shellQuoted
            let newer = a.imagesDirs.map { "[ \(p) -nt \($0.shellQuoted)/inventory.img ]" }.joined(separator: " && ")
            let out = try await sh(try hostName(of: step), "test -f \(p) && \(newer.isEmpty ? "true" : newer) && stat -c %s \(p)")
            return out.succeeded ? .done(outputs: ["bytes": out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)]) : .needed
        case .transfer(let a):
            // Done when the destination holds what the source's current archive was when relayed
            // (its size and modification time, recorded next to the received file) and the file's
            // digest is still the one relayed. Never on a fresh run for a file it did not relay.
            guard trustsFilesOf(context) else { return .needed }
            let d = a.destinationPath.shellQuoted
            let source = try await sh(a.from, "stat -c '%s %.9Y' \(a.sourcePath.shellQuoted)")
            guard source.succeeded else { return .needed }
            let out = try await sh(a.to, "test -f \(d) && cat \(d).sha256 \(d).source && stat -c %s \(d) && sha256sum \(d) && base64 -w0 \(d).manifest")
            let lines = out.stdoutText.split(separator: "\n").map(String.init)
            guard out.succeeded, lines.count == 5,
                  lines[1] == source.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines),
                  lines[3].prefix(while: { !$0.isWhitespace }) == lines[0],
                  let raw = Data(base64Encoded: lines[4]), let manifest = try? MoveManifest.decode(Array(raw)) else { return .needed }
            // A resumed run carries the move id and run from the journal (the completed step's
            // outputs); a retry in this run takes them from the manifest only if this run wrote it.
            // (verifyDigest checks the manifest either way.)
            if context.previouslyCompleted { return .done(outputs: ["sha256": lines[0], "bytes": lines[2]]) }
            guard manifest.runID == context.runID else { return .needed }
            return .done(outputs: ["sha256": lines[0], "bytes": lines[2], "moveID": manifest.moveID, "runID": manifest.runID])
        case .issueTransferKey:
            // A fresh key for every attempt; the revoke steps remove every key of this archive.
            return .needed
        case .revokeTransferKey(let a):
            return try await transferKeyRevoked(a) ? .done : .needed
        case .unpack(let a):
            // Done when the marker names the digest of the archive verified in this run (and this
            // run, or the resumed one, unpacked it).
            guard trustsFilesOf(context) else { return .needed }
            guard let expected = unpackDigest(step, context.outputs) else { return .needed }
            let out = try await sh(try hostName(of: step), "cat \(unpackMarker(a).shellQuoted)")
            return out.succeeded && out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == expected ? .done : .needed
        case .restore(let a), .restoreOnSource(let a):
            // First forward attempt of a fresh run: the act's own command refuses a second copy.
            if case .restore = step.action, !trustsFilesOf(context), !resumed, a.instance.runtime == "runc" { return .needed }
            return try await ops(a.instance, on: try hostName(of: step)).isRunning() ? .done : .needed
        case .start(let a):
            return try await ops(a.instance, on: try hostName(of: step)).isRunning() ? .done : .needed
        case .stop(let a), .kill(let a):
            return try await ops(a.instance, on: try hostName(of: step)).isRunning() ? .needed : .done
        case .cleanupSource(let a), .cleanupDestination(let a):
            let h = try hostName(of: step)
            if step.role == .rollback, case .cleanupDestination = step.action {
                do {
                    return try await cleanupProbe(h, a)
                } catch {
                    // Unreachable but provably not running the container: the act records it.
                    if unreachableDestinationReason(step, a, host: h, error: error) != nil { return .needed }
                    throw error
                }
            }
            return try await cleanupProbe(h, a)
        }
    }

    func cleanupProbe(_ h: String, _ a: CleanupAction) async throws -> ProbeResult {
        for instance in a.instances where try await ops(instance, on: h).state().status != .absent { return .needed }
        if a.paths.isEmpty { return .done }
        let out = try await sh(h, a.paths.map { "[ ! -e \($0.shellQuoted) ] && [ ! -L \($0.shellQuoted) ]" }.joined(separator: " && "))
        return out.succeeded ? .done : .needed
    }

    /// Whether a probe may take a file on a host for this step's effect: only when this runner
    /// acted the step (a retry) or a resumed run had completed it, never a leftover of an earlier
    /// run found by a fresh one (it may hold an older checkpoint than the current one).
    func trustsFilesOf(_ context: StepContext) -> Bool {
        context.previouslyCompleted || lock.withLock { actedSteps.contains(context.step.id) }
    }

    /// A rollback's `cleanupDestination` whose host cannot be reached (sshd dead, host down): the
    /// source must get its container back, which the rollback does only after this step succeeds.
    /// That is safe only when the destination cannot be running the container, i.e. no restore or
    /// start of it acted there in this run (and this is not a resumed run, whose predecessor's acts
    /// are unknown here). Returns the reason to record, or nil when the failure must stand.
    func unreachableDestinationReason(_ step: Step, _ a: CleanupAction, host h: String, error: any Error) -> String? {
        guard step.role == .rollback, !resumed else { return nil }
        let e = ActionError.wrap(error, host: h)
        guard e.kind == .transport else { return nil }
        let names = Set(a.instances.map(\.name))
        let risky = graph.steps.filter { s in
            guard s.role == .forward, s.location == .host(h) else { return false }
            switch s.action {
            case .restore(let r): return names.contains(r.instance.name)
            case .start(let r): return names.contains(r.instance.name)
            default: return false
            }
        }
        let acted = lock.withLock { risky.contains { actedSteps.contains($0.id) } }
        guard !acted else { return nil }
        return "\(h) unreachable (\(e.message)); no restore or start of \(names.sorted().joined(separator: ", ")) ran there in this run, so it cannot run there"
    }

    /// A resumed run: the workloads' state before the move, as the earlier run read it (its
    /// checkpoint's outputs, else its source preflight's), so that `verifyRunning` still compares
    /// the boot token and counter when the container was already frozen before this run began.
    public func seedPreMoveReports(from completed: [StepID: [String: String]]) {
        for step in graph.steps where step.role == .forward {
            guard case .checkpoint(let c) = step.action else { continue }
            let name = c.instance.name
            var boot = completed[step.id]?["boot"]
            var counter = completed[step.id]?["counter"].flatMap { Int($0) }
            if boot == nil, let m = plan.migration(named: step.migration) {
                let preflight = "\(m.name).preflight@\(StepLocation.host(m.from))"
                boot = completed[preflight]?["\(name).boot"]
                counter = completed[preflight]?["\(name).counter"].flatMap { Int($0) }
            }
            guard boot != nil || counter != nil else { continue }
            let report = WorkloadReport(boot: boot, counter: counter, intact: nil, modelDigest: nil, raw: "")
            lock.withLock { if preMoveReports[name] == nil { preMoveReports[name] = report } }
        }
    }

    /// Before a stateful rollback removes an instance from the destination: if it RUNS there, the
    /// source must be able to take it back (its checkpoint images are there, or it runs there);
    /// otherwise the destination's copy is the only one and is left alone (the rollback fails,
    /// saying so; the journal records where the container runs).
    func refuseRemovingTheOnlyCopy(_ step: Step, _ a: CleanupAction) async throws {
        guard let m = plan.migration(named: step.migration), m.flow.isStateful else { return }
        let h = try hostName(of: step)
        for instance in a.instances {
            guard (try? await ops(instance, on: h).isRunning()) == true else { continue }
            if (try? await ops(instance, on: m.from).isRunning()) == true { continue }
            let dirs = checkpointImageDirs(of: instance.name, migration: m.name)
            let test = dirs.map { "[ -f \"$(readlink -f \($0.shellQuoted))/inventory.img\" ]" }.joined(separator: " || ")
            if !dirs.isEmpty, (try? await sh(m.from, test))?.succeeded == true { continue }
            throw ActionError(.containerState, host: h, step: step.id,
                              "\(instance.name) runs on \(h) and \(m.from) has neither a running copy nor its checkpoint images: "
                              + "removing it from \(h) would lose it; left running on \(h)")
        }
    }

    // MARK: Acts

    func actStep(_ context: StepContext) async throws -> [String: String] {
        let step = context.step
        switch step.action {
        case .preflight(let a): return try await preflight(step, a)
        case .ensureSessions(let a):
            var out: [String: String] = [:]
            for h in a.hosts {
                let c = try await sessions.openLanes(h)
                out["\(h).algorithms"] = c.negotiatedAlgorithms.summary
                out["\(h).hostKey"] = c.hostKeyFingerprint
                out["\(h).sessions"] = String(await sessions.openCount(h))
            }
            // The receiving end of a relay into the destination gets its own connection (see
            // `SessionPool.receiveLane`), opened now rather than inside the freeze.
            if let m = plan.migration(named: step.migration), m.flow.isStateful,
               m.transfer.path == .relay || m.transfer.method == .pageServer {
                try await sessions.openReceiveLane(m.to)
                out["\(m.to).receiveLane"] = "open"
            }
            return out
        case .checkpoint(let a): return try await checkpoint(step, a)
        case .pageServerPrepare(let a): return try await pageServerPrepare(context, a)
        case .pageServerFinish(let a): return try await pageServerFinish(context, a)
        case .pageServerReturn(let a): return try await pageServerReturn(context, a)
        case .archive(let a): return try await archive(step, a)
        case .transfer(let a): return try await transfer(context, a)
        case .issueTransferKey(let a): return try await issueTransferKey(context, a)
        case .revokeTransferKey(let a): return try await revokeTransferKey(a)
        case .verifyDigest(let a):
            guard let expected = context.outputs[a.digestFrom]?["sha256"], !expected.isEmpty else {
                throw ActionError(.digestMismatch, host: try hostName(of: step),
                                  "no digest recorded by \(a.digestFrom); refusing to unpack \(a.archivePath)")
            }
            let h = try hostName(of: step)
            // Replay protection first: the controller's authenticated manifest for this run's move
            // (an archive of another run is refused as such, not merely as a digest mismatch).
            let manifest = try await checkManifest(context, a, sha256: expected)
            let out = try await must(h, "sha256sum \(a.archivePath.shellQuoted)", "sha256sum")
            let actual = String(out.stdoutText.prefix(while: { !$0.isWhitespace }))
            guard actual == expected else {
                throw ActionError(.digestMismatch, host: h,
                                  "SHA-256 of \(a.archivePath) is \(actual), the controller relayed \(expected): refusing to unpack")
            }
            return ["sha256": actual, "moveID": manifest.moveID, "runID": manifest.runID]
        case .unpack(let a): return try await unpack(step, a, outputs: context.outputs)
        case .restore(let a), .restoreOnSource(let a):
            if case .restore = step.action, isPageServerMove(step) { return try await pageServerRestore(context, a) }
            let h = try hostName(of: step)
            let m = try migration(of: step)
            let ops = try await ops(a.instance, on: h)
            let work = "\(ops.host.runtime.workDir)/work/\(m.name)/\(a.instance.name)/restore"
            // Replay protection in the act itself (also on `apply --resume`, whose verifyDigest
            // does not consult the ledger): refused when the ledger holds this move for this
            // container; the ledger line is appended by the restore's own command (runc).
            let ledger = try ledgerCommands(step, container: a.instance.name, host: h, outputs: context.outputs)
            let started = ContinuousClock.now
            var restored: [String: String]
            if ops.isDocker {
                if let ledger {
                    let refused = try await sh(h, ledger.refuse + "true")
                    if refused.exitStatus == 67 {
                        throw ActionError(.archiveRefused, host: h, refused.stderrTail(maxBytes: 500).trimmingCharacters(in: .whitespacesAndNewlines))
                    }
                }
                try await ops.restore(from: a.imagesDir, work: work)
                restored = ["seconds": String(format: "%.3f", seconds(ContinuousClock.now - started))]
                if let ledger { try await must(h, ledger.append + "true", "record move \(ledger.moveID) as restored") }
            } else {
                restored = try await runcRestore(ops: ops, imagesDir: a.imagesDir, work: work,
                                                 check: ledger?.refuse ?? "", after: ledger?.append ?? "")
            }
            if let ledger { restored["moveID"] = ledger.moveID }
            return restored
        case .verifyRunning(let a): return try await verifyRunning(step, a)
        case .cleanupSource(let a): return try await cleanup(step, a, force: false)
        case .cleanupDestination(let a):
            if step.role == .rollback { try await refuseRemovingTheOnlyCopy(step, a) }
            do {
                return try await cleanup(step, a, force: true)
            } catch {
                let h = try hostName(of: step)
                guard let reason = unreachableDestinationReason(step, a, host: h, error: error) else { throw error }
                return ["destinationUnreachable": reason, "leftOnDestination": a.paths.joined(separator: " ")]
            }
        case .stop(let a):
            try await ops(a.instance, on: try hostName(of: step)).stop()
            return [:]
        case .kill(let a):
            try await ops(a.instance, on: try hostName(of: step)).kill()
            return [:]
        case .start(let a):
            try await ops(a.instance, on: try hostName(of: step)).start()
            return [:]
        }
    }

    func preflight(_ step: Step, _ a: PreflightAction) async throws -> [String: String] {
        let h = try hostName(of: step)
        let hostInfo = try host(h)
        var out: [String: String] = [:]
        for runtime in a.runtimes {
            switch runtime {
            case "runc":
                let r = try await must(h, "runc --version", "runc --version (is runc installed on \(h)?)")
                out["runc"] = r.stdoutText.split(separator: "\n").first.map(String.init) ?? ""
            case "docker":
                let host = hostInfo.runtime.dockerHost.map { " -H \($0.shellQuoted)" } ?? ""
                let r = try await must(h, "docker\(host) version --format '{{.Server.Version}}'", "docker version (is dockerd running on \(h)?)")
                out["docker"] = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            default:
                throw ActionError(.preflight, host: h, "unknown runtime \(runtime)")
            }
        }
        if a.criuCheck {
            let r = try await sh(h, CriuCommands().check(), timeout: .seconds(120))
            guard CriuCommands.checkPassed(r) else {
                throw ActionError(.preflight, host: h, "criu check failed: \((r.stdoutText + r.stderrText).suffix(400))")
            }
            out["criu"] = "ok"
        }
        let w = a.workDir.shellQuoted
        let df = try await must(h, "mkdir -p \(w) && df -PB1 \(w)", "df \(a.workDir)")
        let space = try HostProbes.parseFreeSpace(df, host: h)
        let minimum: UInt64 = 256 << 20
        guard space.availableBytes >= minimum else {
            throw ActionError(.preflight, host: h, "only \(space.availableBytes) bytes free in \(a.workDir) (need at least \(minimum))")
        }
        out["freeBytes"] = String(space.availableBytes)
        if let m = plan.migration(named: step.migration), m.transfer.path == .direct, m.flow.isStateful, m.from == h {
            // `path: direct`: the source runs OpenSSH's client with a key it generates.
            let tools = try await sh(h, "command -v ssh && command -v ssh-keygen")
            guard tools.succeeded else {
                throw ActionError(.preflight, host: h, "`path: direct` needs OpenSSH's ssh and ssh-keygen on \(h) (Debian: openssh-client); not found")
            }
            out["sshClient"] = "ok"
        }
        // On the source of a stateful move: each workload's state before anything is frozen.
        let m = try migration(of: step)
        if a.criuCheck, m.from == h {
            for container in plan.containers(of: m) {
                for name in container.replicaNames {
                    let instance = ContainerInstance(name: name, container: container.name, runtime: container.runtime.rawValue)
                    let ops = try await ops(instance, on: h)
                    guard try await ops.isRunning(), let report = try? await ops.report(timeoutSeconds: 20) else { continue }
                    lock.withLock { preMoveReports[name] = report }
                    if let boot = report.boot { out["\(name).boot"] = boot }
                    if let counter = report.counter { out["\(name).counter"] = String(counter) }
                }
            }
        }
        return out
    }

    /// tmpfs directory for a checkpoint's images when the host has room (images written to memory
    /// are faster to dump, archive and delete).
    func tmpfsImagesDir(host: String, migration: String, instance: String) -> String {
        "/dev/shm/migplan/\(host)/\(migration)/\(instance)"
    }

    /// The guard every use of `/dev/shm/migplan` runs first (docs/page-server.md, "tmpfs"):
    /// `/dev/shm` is world-writable, so a local user could pre-create migplan's directories and
    /// then read or swap memory dumps. `/dev/shm/migplan` and `/dev/shm/migplan/HOST` are made
    /// with mode 0700 when missing; an existing one must be a real directory (not a symlink)
    /// owned by the login user and writable by no one else (a 0755 one left by an earlier
    /// version is tightened to 0700). Otherwise `$shm` holds the reason (empty when tmpfs may be
    /// used) and a `tmpfs-refused REASON` line goes to stdout: the caller then uses the disk
    /// and reports `tmpfsRefused` in its outputs. Nothing in the refused directory is touched.
    static func shmGuard(host: String) -> String {
        let hostDir = "/dev/shm/migplan/\(host)".shellQuoted
        return "shm=''; u=$(id -u); for d in /dev/shm/migplan \(hostDir); do "
            + "[ -e \"$d\" ] || [ -L \"$d\" ] || mkdir -m 700 \"$d\" 2>/dev/null || true; "
            + "if [ -L \"$d\" ] || [ ! -d \"$d\" ]; then shm=\"$d is a symlink or not a directory\"; break; fi; "
            + "o=$(stat -c '%u %a' \"$d\"); if [ \"${o%% *}\" != \"$u\" ]; then shm=\"$d is owned by uid ${o%% *}, not by $(id -un)\"; break; fi; "
            + "case \"${o#* }\" in 700) ;; 7[0145][0145]) chmod 700 \"$d\" || { shm=\"$d: chmod 700 failed\"; break; } ;; "
            + "*) shm=\"$d has mode ${o#* } (not 0700)\"; break;; esac; done; "
            + "[ -z \"$shm\" ] || echo \"tmpfs-refused $shm; using the disk\"; "
    }

    /// The reason a `shmGuard` refused tmpfs, from a command's stdout.
    static func tmpfsRefusal(_ stdout: String) -> String? {
        stdout.split(separator: "\n").first { $0.hasPrefix("tmpfs-refused ") }.map { String($0.dropFirst("tmpfs-refused ".count)) }
    }

    func checkpoint(_ step: Step, _ a: CheckpointAction) async throws -> [String: String] {
        let h = try hostName(of: step)
        let m = try migration(of: step)
        let ops = try await ops(a.instance, on: h)
        var out: [String: String] = [:]
        // The workload's state before the freeze (normally read by the source's preflight, so it
        // costs no downtime), to compare with after the move.
        if lock.withLock({ preMoveReports[a.instance.name] }) == nil, let report = try? await ops.report(timeoutSeconds: 10) {
            lock.withLock { preMoveReports[a.instance.name] = report }
        }
        if let report = lock.withLock({ preMoveReports[a.instance.name] }) {
            if let boot = report.boot { out["boot"] = boot }
            if let counter = report.counter { out["counter"] = String(counter) }
        }
        if isPageServerMove(step) { return out.merging(try await pageServerDump(step, a)) { $1 } }
        if !ops.isDocker { return out.merging(try await runcCheckpoint(step, a, ops: ops, migration: m)) { $1 } }
        let state = try await ops.state()
        guard state.isRunning else {
            throw ActionError(.containerState, host: h, "\(a.instance.name) is not running on \(h) (\(state.status.rawValue)); nothing to checkpoint")
        }
        let images = a.imagesDir.shellQuoted
        let work = "\(ops.host.runtime.workDir)/work/\(m.name)/\(a.instance.name)/checkpoint"
        var useTmpfs = false
        if !ops.isDocker, let pid = state.pid, pid > 0 {
            // Room on /dev/shm for twice the container's resident memory (+64 MiB)?
            let probe = try await sh(h, "ps -o rss= --pid \(pid) --ppid \(pid) | awk '{s+=$1} END {print s*1024}'; df -PB1 /dev/shm | awk 'NR==2 {print $4}'")
            let numbers = probe.stdoutText.split(separator: "\n").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            if numbers.count == 2 { useTmpfs = numbers[1] > numbers[0] * 2 + Double(64 << 20) }
        }
        if useTmpfs {
            let t = tmpfsImagesDir(host: h, migration: m.name, instance: a.instance.name).shellQuoted
            let guarded = try await must(h, Self.shmGuard(host: h) + "if [ -z \"$shm\" ]; then rm -rf \(images) \(t) && mkdir -p \(t) \"$(dirname \(images))\" && ln -s \(t) \(images); "
                                         + "else rm -rf \(images) && mkdir -p \"$(dirname \(images))\"; fi", "prepare tmpfs images dir")
            if let refused = Self.tmpfsRefusal(guarded.stdoutText) {
                useTmpfs = false
                out["tmpfsRefused"] = refused
            }
        } else {
            try await must(h, "rm -rf \(images) && mkdir -p \"$(dirname \(images))\"", "prepare images dir")
        }
        out["images"] = useTmpfs ? "tmpfs" : "disk"
        let started = ContinuousClock.now
        try await ops.checkpoint(into: a.imagesDir, work: work)
        out["seconds"] = String(format: "%.3f", seconds(ContinuousClock.now - started))
        return out
    }

    /// A runc checkpoint in ONE command on the source (each command is an SSH round trip inside
    /// the downtime): the container must run; images on tmpfs when it has room for twice the
    /// container's resident memory (+64 MiB), else on disk; `runc checkpoint`; then what the
    /// verify step checks (no longer running, `inventory.img` present), reported as `verified`.
    func runcCheckpoint(_ step: Step, _ a: CheckpointAction, ops: InstanceRuntime, migration m: Migration) async throws -> [String: String] {
        let h = ops.host.name
        let name = a.instance.name
        let images = a.imagesDir.shellQuoted
        let t = tmpfsImagesDir(host: h, migration: m.name, instance: name).shellQuoted
        let work = "\(ops.host.runtime.workDir)/work/\(m.name)/\(name)/checkpoint"
        let state = ops.runc.state(name: name)
        let checkpoint = ops.runc.checkpoint(name: name, imagePath: a.imagesDir, workPath: work)
        let script = "st=$(\(state) 2>/dev/null | tr -d ' \\n'); "
            + "case \"$st\" in *'\"status\":\"running\"'*) ;; *) s=$(printf '%s' \"$st\" | sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p'); "
            + "echo \"\(name) is not running on \(h) (${s:-absent}); nothing to checkpoint\" >&2; exit 64;; esac; "
            + "pid=$(printf '%s' \"$st\" | sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); "
            + "rss=$(ps -o rss= --pid \"$pid\" --ppid \"$pid\" | awk '{s+=$1} END {print s*1024}'); "
            + "free=$(df -PB1 /dev/shm | awk 'NR==2 {print $4}'); "
            + "if [ \"${free:-0}\" -gt $(( ${rss:-0} * 2 + 67108864 )) ]; then \(Self.shmGuard(host: h))else shm=disk; fi; "
            + "if [ -z \"$shm\" ]; then "
            + "rm -rf \(images) \(t) && mkdir -p \(t) \"$(dirname \(images))\" && ln -s \(t) \(images) && echo 'images tmpfs' || exit 65; "
            + "else rm -rf \(images) && mkdir -p \"$(dirname \(images))\" && echo 'images disk' || exit 65; fi; "
            + "s0=\(LiveStepRunner.now); \(checkpoint); rc=$?; s1=\(LiveStepRunner.now); "
            + "if [ $rc -ne 0 ]; then { echo; echo '--- CRIU dump.log:'; tail -c 3000 \(RuncCommands.dumpLog(workPath: work).shellQuoted); } >&2 2>/dev/null; exit $rc; fi; "
            + "echo \"criu-s $s0 $s1\"; "
            + "\(state) >/dev/null 2>&1 && { echo '\(name) still runs after its checkpoint' >&2; exit 66; }; "
            + "test -f \(images)/inventory.img || { echo 'no inventory.img after the checkpoint' >&2; exit 67; }; echo verified"
        let out = try await sh(h, script)
        switch out.exitStatus {
        case 0: break
        case 64, 66: throw ActionError(.containerState, host: h, out.stderrTail(maxBytes: 500).trimmingCharacters(in: .whitespacesAndNewlines))
        case 65: throw ActionError(.commandFailed, host: h, "prepare the images dir failed: \(out.stderrTail(maxBytes: 500))")
        default:
            throw ActionError(.runtime, host: h, "runc checkpoint \(name) failed (exit \(out.exitStatus)): \(out.stderrTail(maxBytes: 3000))")
        }
        let lines = out.stdoutText.split(separator: "\n").map(String.init)
        let criu = lines.first { $0.hasPrefix("criu-s ") }.map { Self.marks(String($0.dropFirst(7))) } ?? []
        var result = ["images": lines.contains("images tmpfs") ? "tmpfs" : "disk",
                      "seconds": String(format: "%.3f", criu.count == 2 ? criu[1] - criu[0] : 0),
                      "verified": lines.contains("verified") ? "yes" : "no"]
        if let refused = Self.tmpfsRefusal(out.stdoutText) { result["tmpfsRefused"] = refused }
        return result
    }

    /// A runc restore in ONE command on its host: refuses when a copy already runs, removes a
    /// stopped leftover, makes the workload's state directory, `runc restore`, then reports the
    /// state the verify step checks (`status`). `check` runs first and may refuse (exit 65:
    /// digest mismatch) — the page-server move checks its received images there.
    func runcRestore(ops: InstanceRuntime, imagesDir: String, work: String, check: String = "", after: String = "") async throws -> [String: String] {
        let out = try await sh(ops.host.name, Self.runcRestoreScript(ops: ops, imagesDir: imagesDir, work: work, check: check, after: after))
        return try Self.restoreOutcome(out, host: ops.host.name, name: ops.name)
    }

    /// The command of `runcRestore` (also started ahead of time by a page-server move).
    /// `check` runs first (it may refuse: exit 65–67), `after` right after a successful restore
    /// (before anything is printed: it runs even when the controller's session is gone).
    static func runcRestoreScript(ops: InstanceRuntime, imagesDir: String, work: String, check: String, after: String = "") -> String {
        let h = ops.host.name
        let name = ops.name
        let stateDir = ops.stateDir.shellQuoted
        let state = ops.runc.state(name: name)
        let status = "tr -d ' \\n' | sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p'"
        let restore = ops.runc.restore(name: name, bundle: ops.bundle, imagePath: imagesDir, workPath: work)
        let script = "a0=\(now); " + check
            + "a1=\(now); s=$(\(state) 2>/dev/null | \(status)); "
            + "case \"$s\" in running|paused) echo \"\(name) already runs on \(h); not restoring a second copy\" >&2; exit 66;; "
            + "'') ;; *) \(ops.runc.delete(name: name, force: true)) >/dev/null 2>&1 || true;; esac; "
            + "mkdir -p \(stateDir)/requests \(stateDir)/responses; "
            + "s0=\(now); ( \(restore) ); rc=$?; s1=\(now); "
            + "if [ $rc -ne 0 ]; then { echo; echo '--- CRIU restore.log:'; tail -c 3000 \(RuncCommands.restoreLog(workPath: work).shellQuoted); } >&2 2>/dev/null; exit $rc; fi; \(after)"
            + "echo \"status $(\(state) 2>/dev/null | \(status))\"; echo \"marks $a0 $a1 $s0 $s1 \(now)\""
        return script
    }

    /// A timestamp in seconds taken by a remote shell: bash's `$EPOCHREALTIME` costs no process
    /// (a `date` forked inside the downtime costs 5–50 ms on a loaded host), `date` elsewhere.
    static let now = "${EPOCHREALTIME:-$(date +%s.%N)}"

    /// Timestamps printed by `now`, space-separated.
    static func marks(_ text: String) -> [Double] {
        text.split(separator: " ").compactMap { Double($0.replacingOccurrences(of: ",", with: ".")) }
    }

    /// What `runcRestoreScript`'s output means: refused (65 digest, 66 a copy runs), failed, or
    /// restored (its duration, the state the verify step checks); 67: a replay the ledger refused.
    static func restoreOutcome(_ out: CommandOutput, host h: String, name: String) throws -> [String: String] {
        switch out.exitStatus {
        case 0: break
        case 65: throw ActionError(.digestMismatch, host: h, out.stderrTail(maxBytes: 500).trimmingCharacters(in: .whitespacesAndNewlines))
        case 66: throw ActionError(.containerState, host: h, out.stderrTail(maxBytes: 500).trimmingCharacters(in: .whitespacesAndNewlines))
        case 67: throw ActionError(.archiveRefused, host: h, out.stderrTail(maxBytes: 500).trimmingCharacters(in: .whitespacesAndNewlines))
        default:
            throw ActionError(.runtime, host: h, "runc restore \(name) failed (exit \(out.exitStatus)): \(out.stderrTail(maxBytes: 3000))")
        }
        let lines = out.stdoutText.split(separator: "\n").map(String.init)
        let after = lines.first { $0.hasPrefix("status ") }.map { String($0.dropFirst(7)) } ?? ""
        // Timestamps taken by the command (start, checks done, restore start, restore end, end).
        let marks = lines.first { $0.hasPrefix("marks ") }.map { String($0.dropFirst(6)) } ?? ""
        let t = Self.marks(marks)
        var result = ["seconds": String(format: "%.3f", t.count == 5 ? t[3] - t[2] : 0), "status": after, "marks": marks]
        if let d = lines.first(where: { $0.hasPrefix("digest-s ") }).map({ Self.marks(String($0.dropFirst(9))) }), d.count == 2 {
            result["digestSeconds"] = String(format: "%.3f", d[1] - d[0])
        }
        return result
    }

    func archive(_ step: Step, _ a: ArchiveAction) async throws -> [String: String] {
        let h = try hostName(of: step)
        let path = a.archivePath.shellQuoted
        var members = ""
        for (i, dir) in a.imagesDirs.enumerated() {
            members += "d\(i)=$(readlink -f \(dir.shellQuoted)) && [ -f \"$d\(i)/inventory.img\" ] || { echo \"no checkpoint images in \(dir)\" >&2; exit 1; }; "
        }
        let words = a.imagesDirs.indices.map { "-C \"${d\($0)%/*}\" \"${d\($0)##*/}\"" }.joined(separator: " ")
        let compress: String
        switch a.compression {
        case .none: compress = ""
        case .zlib(let level): compress = " | gzip -\(min(9, max(1, level))) -n"
        }
        let script = "set -o pipefail; \(members)mkdir -p \"$(dirname \(path))\" && rm -f \(path).part && "
            + "tar -c -f - \(words)\(compress) > \(path).part && mv \(path).part \(path) && stat -c %s \(path)"
        let started = ContinuousClock.now
        let out = try await must(h, script, "archive")
        return ["bytes": out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines),
                "seconds": String(format: "%.3f", seconds(ContinuousClock.now - started))]
    }

    func transfer(_ context: StepContext, _ a: TransferAction) async throws -> [String: String] {
        let statOut = try await must(a.from, "stat -c '%s %.9Y' \(a.sourcePath.shellQuoted)", "stat archive")
        let sourceStamp = statOut.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        if a.route == .direct {
            let sent = try await directTransfer(context, a, sourceStamp: sourceStamp)
            let d = a.destinationPath.shellQuoted
            await context.reportProgress(bytes: sent.bytes, total: sent.bytes)
            try await must(a.to, "mv \(d).part \(d) && printf '%s\\n' \(sent.sha256) > \(d).sha256 && printf '%s\\n' \(sourceStamp.shellQuoted) > \(d).source",
                           "finish receiving")
            var out = ["sha256": sent.sha256, "bytes": String(sent.bytes), "seconds": String(format: "%.3f", sent.seconds),
                       "route": "direct",
                       "bytesPerSecond": String(format: "%.0f", sent.seconds > 0 ? Double(sent.bytes) / sent.seconds : 0)]
            out.merge(try await writeManifest(context, a, moveID: sent.moveID, sha256: sent.sha256, bytes: sent.bytes)) { _, new in new }
            return out
        }
        let total = sourceStamp.split(separator: " ").first.flatMap { Int64($0) }
        let compressed: Bool
        if case .archive(let arch)? = context.step.dependsOn.compactMap({ graph.step($0)?.action }).first {
            compressed = arch.compression != .none
        } else {
            compressed = a.sourcePath.hasSuffix(".zz") || a.sourcePath.hasSuffix(".gz")
        }
        let (source, destination) = try await relayEnds(from: a.from, to: a.to)
        let d = a.destinationPath.shellQuoted
        let reporter = ProgressThrottle(context: context, total: total)
        let recordKey = AttemptScope.key
        let startedAt = Date()
        let sendCommand = "cat \(a.sourcePath.shellQuoted)"
        let receiveCommand = "mkdir -p \"$(dirname \(d))\" && rm -f \(d) \(d).sha256 \(d).source \(d).manifest \(d).manifest.hmac && cat > \(d).part"
        let result: ValidatedRelayResult
        do {
            result = try await ValidatingRelay.run(from: source, sendCommand, to: destination, receiveCommand,
                                                   compressed: compressed, timeout: commandTimeout,
                                                   progress: { bytes in reporter.update(bytes) })
        } catch {
            if let key = recordKey {
                recorder.append(CommandEntry(host: "controller", command: "relay \(a.from): \(sendCommand) -> \(a.to): \(receiveCommand)",
                                             exitStatus: nil, stdoutTail: "", stderrTail: "", startedAt: startedAt,
                                             duration: Date().timeIntervalSince(startedAt), error: String(describing: error)), key: key)
            }
            _ = try? await sh(a.to, "rm -f \(d).part")
            if let e = error as? ActionError, e.kind == .transport, e.isRetryable {
                await sessions.discard(a.from, broken: source)
                await sessions.discard(a.to, broken: destination)
            }
            throw error
        }
        if let key = recordKey {
            recorder.append(CommandEntry(host: "controller", command: "relay \(a.from): \(sendCommand) -> \(a.to): \(receiveCommand)",
                                         exitStatus: 0, stdoutTail: "\(result.bytes) bytes, \(result.entries) tar entries, sha256 \(result.sha256)",
                                         stderrTail: "", startedAt: startedAt, duration: seconds(result.duration), error: nil), key: key)
        }
        await context.reportProgress(bytes: result.bytes, total: total)
        try await must(a.to, "mv \(d).part \(d) && printf '%s\\n' \(result.sha256) > \(d).sha256 && printf '%s\\n' \(sourceStamp.shellQuoted) > \(d).source",
                       "finish receiving")
        let secs = seconds(result.duration)
        var relayed = ["sha256": result.sha256, "bytes": String(result.bytes), "seconds": String(format: "%.3f", secs),
                       "entries": String(result.entries),
                       "bytesPerSecond": String(format: "%.0f", secs > 0 ? Double(result.bytes) / secs : 0)]
        relayed.merge(try await writeManifest(context, a, moveID: MoveManifest.newMoveID(), sha256: result.sha256,
                                              bytes: result.bytes)) { _, new in new }
        return relayed
    }

    /// The two SSH connections a relay joins (opened before any freeze, reused).
    func relayEnds(from: String, to: String) async throws -> (SSHConnection, SSHConnection) {
        do {
            return (try await sessions.connection(from), try await sessions.receivingConnection(to))
        } catch {
            throw ActionError.wrap(error, host: nil)
        }
    }

    /// The digest (from the transfer step) of the archive an unpack step unpacks.
    func unpackDigest(_ step: Step, _ outputs: [StepID: [String: String]]) -> String? {
        for dependency in step.dependsOn {
            if case .verifyDigest(let v)? = graph.step(dependency)?.action { return outputs[v.digestFrom]?["sha256"] }
        }
        return nil
    }

    func unpackMarker(_ a: UnpackAction) -> String {
        let name = a.archivePath.split(separator: "/").last.map(String.init) ?? "archive"
        return "\(a.intoDir)/.unpacked-\(name)"
    }

    func unpack(_ step: Step, _ a: UnpackAction, outputs: [StepID: [String: String]]) async throws -> [String: String] {
        let h = try hostName(of: step)
        let compressed = a.compression != .none
        let archive = a.archivePath.shellQuoted
        let m = step.migration.isEmpty ? "unpack" : step.migration
        let tag = UUID().uuidString.prefix(8)
        let shmDir = "/dev/shm/migplan/\(h)/restore".shellQuoted
        // A compressed archive is inflated once: into a plain tar on tmpfs (when there is room for
        // it and its contents) while that same stream is listed; extraction then reads the plain tar.
        let plain = "/dev/shm/migplan/\(h)/restore/\(m).\(tag).tar".shellQuoted
        let free = "free=$(df -PB1 /dev/shm | awk 'NR==2 {print $4}')"
        let listCommand: String
        if compressed {
            listCommand = "set -o pipefail; \(free); { \(Self.shmGuard(host: h))} >/dev/null; [ -z \"$shm\" ] || free=0; isize=$(gzip -l \(archive) | awk 'NR==2 {print $2}'); "
                + "if [ \"${isize:-0}\" -gt 0 ] && [ \"$free\" -gt $((isize * 3 + 67108864)) ]; then "
                + "mkdir -p \(shmDir) && gzip -dc \(archive) | tee \(plain) | { tar -t -v --quoting-style=c -f - && cat > /dev/null; } || { rm -f \(plain); exit 1; }; "
                + "echo; echo \"plain yes\"; else tar -t -v --quoting-style=c -z -f \(archive) || exit 1; echo; echo \"plain no\"; fi; "
                + "echo \"shm-free $free\"; [ -z \"$shm\" ] || echo \"tmpfs-refused $shm; using the disk\""
        } else {
            listCommand = "\(free); { \(Self.shmGuard(host: h))} >/dev/null; [ -z \"$shm\" ] || free=0; tar -t -v --quoting-style=c -f \(archive) || exit 1; echo; echo \"plain no\"; echo \"shm-free $free\"; "
                + "[ -z \"$shm\" ] || echo \"tmpfs-refused $shm; using the disk\""
        }
        // 1. The listing, checked here before anything is written.
        let listing = try await must(h, listCommand, "tar -tv")
        var lines = listing.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        while lines.last == "" { lines.removeLast() }
        var shmFree: Double = 0
        var havePlain = false
        var refused: String?
        if let last = lines.last, last.hasPrefix("tmpfs-refused ") {
            refused = String(last.dropFirst("tmpfs-refused ".count))
            lines.removeLast()
        }
        if let last = lines.last, last.hasPrefix("shm-free ") {
            shmFree = Double(last.dropFirst("shm-free ".count)) ?? 0
            lines.removeLast()
        }
        if let last = lines.last, last.hasPrefix("plain ") {
            havePlain = last == "plain yes"
            lines.removeLast()
        }
        let checked: TarListingValidator.Summary
        do {
            checked = try TarListingValidator.summarize(lines.joined(separator: "\n"))
        } catch {
            if havePlain { _ = try? await sh(h, "rm -f \(plain)") }
            throw ActionError(.archiveRefused, host: h, error.description)
        }
        // 2. Extraction into a fresh directory — on tmpfs when it has room for twice the images
        //    (restores read them faster; the instance directories become symlinks to it) — then
        //    each top-level entry put in place.
        let into = a.intoDir.shellQuoted
        let useTmpfs = shmFree > Double(checked.bytes) * 2 + Double(64 << 20)
        let fresh = (useTmpfs ? "/dev/shm/migplan/\(h)/restore/\(m).\(tag)" : "\(a.intoDir).unpack-\(tag)").shellQuoted
        let place = useTmpfs ? "ln -s \"$e\" \(into)/\"$n\"" : "mv \"$e\" \(into)/"
        let source = havePlain ? "-f \(plain)" : (compressed ? "-z -f \(archive)" : "-f \(archive)")
        let script = "set -e; rm -rf \(fresh); mkdir -p \(fresh) \(into); "
            + "tar -x --no-same-owner --no-overwrite-dir \(source) -C \(fresh); "
            + (havePlain ? "rm -f \(plain); " : "")
            + "for e in \(fresh)/* ; do [ -e \"$e\" ] || continue; n=${e##*/}; "
            + "old=$(readlink -f \(into)/\"$n\" 2>/dev/null || true); rm -rf \(into)/\"$n\"; "
            + "case \"$old\" in /dev/shm/migplan/*) rm -rf \"$old\";; esac; \(place); done; "
            + (useTmpfs ? "" : "rm -rf \(fresh); ")
            + "printf '%s\\n' \((unpackDigest(step, outputs) ?? "unknown").shellQuoted) > \(unpackMarker(a).shellQuoted)"
        do {
            try await must(h, script, "unpack")
        } catch {
            // Nothing half-extracted stays (it may be a memory dump on tmpfs); what was already
            // put in place goes with the rollback's cleanup of the destination.
            _ = try? await sh(h, "rm -rf \(fresh)" + (havePlain ? " \(plain)" : ""), timeout: .seconds(120))
            throw error
        }
        var result = ["entries": String(checked.entries), "bytes": String(checked.bytes), "images": useTmpfs ? "tmpfs" : "disk",
                      "inflatedOnce": String(havePlain)]
        if let refused { result["tmpfsRefused"] = refused }
        return result
    }

    func verifyRunning(_ step: Step, _ a: VerifyRunningAction) async throws -> [String: String] {
        let h = try hostName(of: step)
        var out = try await verifyRunningState(step, a, host: h)
        if a.checkState, step.role == .rollback, let m = plan.migration(named: step.migration), m.from == h {
            // The container runs again on the source, verified (same process when it answers
            // reports): its checkpoint images — a memory dump, possibly on tmpfs — are no longer
            // needed and must not stay at rest. Never removed before this point.
            let dirs = checkpointImageDirs(of: a.instance.name, migration: m.name)
            if !dirs.isEmpty {
                let removal = try? await sh(h, Self.removeScript(dirs), timeout: .seconds(120))
                if removal?.succeeded == true {
                    out["imagesRemoved"] = dirs.joined(separator: " ")
                } else {
                    out["imagesLeft"] = dirs.joined(separator: " ")
                }
            }
        }
        return out
    }

    func verifyRunningState(_ step: Step, _ a: VerifyRunningAction, host h: String) async throws -> [String: String] {
        let ops = try await ops(a.instance, on: h)
        let state = try await ops.state()
        guard state.isRunning else {
            throw ActionError(.containerState, host: h, "\(a.instance.name) is not running on \(h) (\(state.status.rawValue))")
        }
        var out: [String: String] = ["status": state.status.rawValue]
        guard let report = try await ops.report() else { return out }
        if let boot = report.boot { out["boot"] = boot }
        if let counter = report.counter { out["counter"] = String(counter) }
        if let model = report.modelDigest { out["modelDigest"] = model }
        if let intact = report.intact {
            out["intact"] = String(intact)
            guard intact else { throw ActionError(.stateLost, host: h, "\(a.instance.name): the workload reports its memory is not intact") }
        }
        if a.checkState, let before = lock.withLock({ preMoveReports[a.instance.name] }) {
            if let b0 = before.boot, let b1 = report.boot, b0 != b1 {
                throw ActionError(.stateLost, host: h, "\(a.instance.name): a different process answers (boot \(b1), was \(b0)): state lost")
            }
            if let m0 = before.modelDigest, let m1 = report.modelDigest, m0 != m1 {
                throw ActionError(.stateLost, host: h, "\(a.instance.name): model digest \(m1) differs from \(m0) before the move")
            }
            if let c0 = before.counter, let c1 = report.counter, c1 < c0 {
                throw ActionError(.stateLost, host: h, "\(a.instance.name): counter went back from \(c0) to \(c1)")
            }
        }
        if a.checkState, step.role == .forward, let m = plan.migration(named: step.migration), m.to == h {
            // Verified: the images this restore used are no longer needed (they may sit on tmpfs).
            _ = try? await sh(h, Self.removeCommand("\(try host(h).runtime.workDir)/restore/\(m.name)/\(a.instance.name)"))
        }
        return out
    }

    /// The source's checkpoint image directories of an instance in a migration.
    func checkpointImageDirs(of instance: String, migration: String) -> [String] {
        graph.steps.compactMap { s in
            guard s.migration == migration, case .checkpoint(let c) = s.action, c.instance.name == instance else { return nil }
            return c.imagesDir
        }
    }

    /// Removes `paths` (see `removeCommand`); the per-migration directories holding them
    /// (checkpoints/MIGRATION, restore/MIGRATION, archives/MIGRATION.d, incoming/MIGRATION.d) go
    /// with their last entry (`rmdir` only removes an empty directory).
    static func removeScript(_ paths: [String]) -> String {
        let areas: Set<String> = ["checkpoints", "restore", "archives", "incoming"]
        let parents = Set(paths.map { ($0 as NSString).deletingLastPathComponent }.filter {
            areas.contains((($0 as NSString).deletingLastPathComponent as NSString).lastPathComponent)
        })
        return (paths.map(removeCommand) + parents.sorted().map { "rmdir \($0.shellQuoted) 2>/dev/null || true" })
            .joined(separator: "; ")
    }

    /// A shell command removing `path` and, when it is a symlink into migplan's tmpfs area, its target.
    static func removeCommand(_ path: String) -> String {
        let q = path.shellQuoted
        return "t=$(readlink -f \(q) 2>/dev/null || true); rm -rf \(q); "
            + "case \"$t\" in /dev/shm/migplan/*) rm -rf \"$t\"; rmdir \"${t%/*}\" 2>/dev/null || true;; esac"
    }

    func cleanup(_ step: Step, _ a: CleanupAction, force: Bool) async throws -> [String: String] {
        let h = try hostName(of: step)
        for instance in a.instances {
            let ops = try await ops(instance, on: h)
            let state = try await ops.state()
            if state.isRunning && !force {
                throw ActionError(.containerState, host: h, "\(instance.name) still runs on \(h); not removing it")
            }
            if state.status != .absent { try await ops.remove() }
        }
        if !a.paths.isEmpty {
            // Checkpoint directories may be symlinks into /dev/shm/migplan: remove both.
            let script = Self.removeScript(a.paths)
            try await must(h, script, "remove \(a.paths.joined(separator: ", "))")
        }
        return [:]
    }

    // MARK: Verify

    func verifyStep(_ context: StepContext, outputs: [String: String]) async throws {
        let step = context.step
        switch step.action {
        case .checkpoint(let a):
            // Checked by the act's own command (one round trip less inside the downtime).
            if outputs["verified"] == "yes" { return }
            let h = try hostName(of: step)
            if try await ops(a.instance, on: h).isRunning() {
                throw ActionError(.containerState, host: h, "\(a.instance.name) still runs after its checkpoint")
            }
            try await must(h, "test -f \(a.imagesDir.shellQuoted)/inventory.img", "checkpoint images present")
        case .restore, .restoreOnSource, .start:
            if outputs["status"] == "running" { return }  // checked by the act's own command
            let h = try hostName(of: step)
            guard let instance = step.action.instanceCarried else { return }
            if !(try await ops(instance, on: h).isRunning()) {
                throw ActionError(.containerState, host: h, "\(instance.name) does not run on \(h) after \(step.action.kind)")
            }
        case .stop(let a), .kill(let a):
            let h = try hostName(of: step)
            if try await ops(a.instance, on: h).isRunning() {
                throw ActionError(.containerState, host: h, "\(a.instance.name) still runs on \(h) after \(step.action.kind)")
            }
        default:
            return
        }
    }
}

extension StepAction {
    /// The single instance a step acts on, if any.
    var instanceCarried: ContainerInstance? {
        switch self {
        case .checkpoint(let a): return a.instance
        case .restore(let a), .restoreOnSource(let a): return a.instance
        case .verifyRunning(let a): return a.instance
        case .stop(let a), .kill(let a), .start(let a): return a.instance
        default: return nil
        }
    }

    /// Every instance a step concerns (the members of an archive, the containers of a cleanup).
    var instancesConcerned: [ContainerInstance] {
        switch self {
        case .archive(let a): return a.instances
        case .cleanupSource(let a), .cleanupDestination(let a): return a.instances
        default: return instanceCarried.map { [$0] } ?? []
        }
    }
}

/// Turns the SSH layer's byte counts (on its own thread) into at most a few progress events a second.
final class ProgressThrottle: @unchecked Sendable {
    private let lock = NSLock()
    private var last = ContinuousClock.now - .seconds(1)
    private let context: StepContext
    private let total: Int64?

    init(context: StepContext, total: Int64?) {
        self.context = context
        self.total = total
    }

    func update(_ bytes: Int64) {
        let now = ContinuousClock.now
        let due: Bool = lock.withLock {
            guard now - last >= .milliseconds(250) else { return false }
            last = now
            return true
        }
        guard due else { return }
        let context = self.context
        let total = self.total
        Task { await context.reportProgress(bytes: bytes, total: total) }
    }
}


/// Tells the live runner (and the session pool) about steps that failed with their effect unknown
/// (timed out and abandoned): the host's session may still be busy with the abandoned command, so
/// it is dropped (later steps reconnect instead of queueing behind it), and rollback steps on that
/// host wait for the abandoned commands to end.
public struct AbandonedStepObserver: ExecutionObserver {
    let runner: LiveStepRunner
    public init(runner: LiveStepRunner) { self.runner = runner }

    public func handle(_ event: ExecutionEvent) async {
        guard case .stepFinished(let id, .failed(let failure), _, _) = event, failure.effectUnknown,
              let step = runner.graph.step(id) else { return }
        runner.noteEffectUnknown(id)
        switch step.action {
        case .transfer(let t):
            await runner.sessions.discard(t.from)
            await runner.sessions.discard(t.to)
        default:
            if case .host(let h) = step.location { await runner.sessions.discard(h) }
        }
    }
}
