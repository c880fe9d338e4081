import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import MigPlanModel

/// Why `apply` could not run (as opposed to a run that failed).
public struct ApplyError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case invalidPlan, graph, noJournal, journalUnreachable, locked, resume, convergence, faultInjection
    }
    public var kind: Kind
    public var message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

/// Settings of one `apply`.
public struct ApplyOptions: Sendable {
    public var parallelism: Int = 4
    public var resumeRunID: String?
    public var lockTimeout: Duration = .seconds(30)
    public var environment: [String: String] = ProcessInfo.processInfo.environment
    public var hooks = FaultHooks()
    /// Progress display, tests' event capture...
    public var observer: (any ExecutionObserver)?
    public var stop = StopSignal()
    /// The command line, for the journal's run record.
    public var command = "apply"
    /// Journal schema override (tests use a throwaway schema).
    public var journalSchema: String?
    /// Called once the run id is known (before anything runs).
    public var onRunID: (@Sendable (String) -> Void)?

    public init() {}
}

/// How a run ended.
public struct ApplyResult: Sendable {
    public enum Outcome: String, Sendable {
        /// Every step succeeded; `changed` says whether anything changed.
        case succeeded
        /// A step failed; rollbacks (if any) ran.
        case failed
        /// Stopped by a signal at a safe point.
        case stopped
        /// The hosts were not in a state the plan can be applied to; nothing was touched.
        case refused
    }
    public var runID: String
    public var outcome: Outcome
    public var changed: Bool
    public var report: ExecutionReport?
    public var metrics: [ContainerMetrics]
    public var problems: [String]
    public var journalWriteFailures: [String]

    /// `apply`'s exit status (docs/exit-codes.md).
    public func exitStatus(detailed: Bool) -> Int32 {
        switch outcome {
        case .succeeded: return detailed && changed ? 3 : 0
        case .failed, .stopped, .refused: return 1
        }
    }

    /// One line for people.
    public var summary: String {
        switch outcome {
        case .succeeded: return changed ? "run \(runID): changes applied" : "run \(runID): no changes (everything already in place)"
        case .stopped: return "run \(runID): stopped" + ((report?.rolledBack.isEmpty ?? true) ? "" : ", rolled back \(report!.rolledBack.joined(separator: ", "))")
        case .refused: return "run \(runID): refused, nothing touched: " + problems.joined(separator: "; ")
        case .failed:
            var s = "run \(runID): failed"
            if let r = report, !r.rolledBack.isEmpty { s += ", rolled back \(r.rolledBack.joined(separator: ", "))" }
            if !problems.isEmpty { s += ": " + problems.joined(separator: "; ") }
            return s
        }
    }
}

/// `migplan apply` as a library call: load, compile, open the journal (refusing to run without
/// it), lock the containers, check where they run, execute the graph with the live runner, and
/// record everything.
public enum ApplySession {
    /// The plan's journal section as a connection configuration (its sslmode is also the minimum).
    public static func journalConfig(_ j: MigPlanModel.Journal, schema: String? = nil) -> JournalConfig {
        let mode = JournalSSLMode(rawValue: j.sslmode.rawValue) ?? .verifyFull
        return JournalConfig(host: j.host, port: j.port, database: j.dbname, user: j.user, sslMode: mode, minimumSSLMode: mode,
                             sslRootCert: j.sslrootcert, connectTimeout: max(1, Int(j.connectTimeout.components.seconds)),
                             applicationName: "migplan apply", passwordEnvironmentVariable: j.passwordEnv, schema: schema)
    }

    public static func apply(planFile: String, options: ApplyOptions = ApplyOptions()) async throws -> ApplyResult {
        let plan: Plan
        do {
            plan = try PlanLoader.loadValid(file: planFile, options: PlanLoadOptions(environment: options.environment))
        } catch {
            throw ApplyError(.invalidPlan, "\(planFile): the plan is invalid (see `migplan validate \(planFile)`):\n\(error)")
        }
        let graph: StepGraph
        do {
            graph = try PlanCompiler.compile(plan).validated()
        } catch {
            throw ApplyError(.graph, "\(planFile): \(error)")
        }
        guard let j = plan.journal else {
            throw ApplyError(.noJournal, "\(planFile): the plan has no `journal` section; apply records every run and refuses to run without one")
        }
        let config = journalConfig(j, schema: options.journalSchema)
        var password: String?
        if let name = j.passwordEnv {
            guard let value = options.environment[name], !value.isEmpty else {
                throw ApplyError(.journalUnreachable, "the journal password is expected in the environment variable \(name), which is not set (lab: `. .lab/env`)")
            }
            password = value
        }
        let journal: MigPlanJournal.Journal
        do {
            journal = try await MigPlanJournal.Journal.open(config: config, password: password)
        } catch {
            throw ApplyError(.journalUnreachable, "the journal at \(config.target) is unreachable: \(error)\napply refuses to run without its journal (the record of what was done)")
        }
        do {
            let result = try await run(plan: plan, planFile: planFile, graph: graph, journal: journal,
                                       secrets: secrets(of: plan, environment: options.environment, journalPassword: password),
                                       options: options)
            await journal.close()
            return result
        } catch {
            await journal.close()
            throw error
        }
    }

    /// Every secret a run could echo, to be redacted from what the journal records: the journal
    /// password and the passphrases of the plan's keys (read from the environment variables the
    /// plan names).
    public static func secrets(of plan: Plan, environment: [String: String], journalPassword: String?) -> [String] {
        var result: [String] = []
        if let p = journalPassword, !p.isEmpty { result.append(p) }
        for key in plan.keys {
            if let name = key.passphraseEnv, let value = environment[name], !value.isEmpty { result.append(value) }
        }
        return result
    }

    static func resumeState(_ runID: String, graph: StepGraph, journal: MigPlanJournal.Journal, depth: Int = 0) async throws -> ResumeState {
        let detail: JournalReader.RunDetail
        do {
            detail = try await JournalReader(connection: try await journal.liveConnection()).run(runID)
        } catch {
            throw ApplyError(.resume, "cannot resume run \(runID): \(error)")
        }
        // A run that was itself a resume (killed before it re-recorded everything): what the run
        // it resumed had completed counts too, overridden by what this one recorded.
        var inherited = ResumeState()
        if let previous = detail.resumes, previous != detail.run.id, depth < 16 {
            inherited = try await resumeState(previous, graph: graph, journal: journal, depth: depth + 1)
        }
        if detail.run.planName != graph.plan {
            throw ApplyError(.resume, "run \(detail.run.id) applied plan \(detail.run.planName), not \(graph.plan)")
        }
        var completed: [StepID: [String: String]] = [:]
        var started = Set<StepID>()
        for step in detail.steps {
            started.insert(step.stepKey)
            guard step.status == "changed" || step.status == "unchanged" else { continue }
            var outputs: [String: String] = [:]
            if let d = step.detail, let data = d.data(using: .utf8),
               let decoded = try? JSONDecoder().decode([String: String].self, from: data) {
                outputs = decoded
            }
            completed[step.stepKey] = outputs
        }
        let triggered = Set(graph.rollbacks.filter { group in group.steps.contains { started.contains($0.id) } }.map(\.id))
        for (id, outputs) in inherited.completed where !started.contains(id) { completed[id] = outputs }
        return ResumeState(completed: completed.filter { id, _ in graph.step(id)?.role == .forward },
                           triggeredRollbacks: triggered.union(inherited.triggeredRollbacks))
    }

    /// Migrations a resumed run's predecessor had started moving: a step arming one of their
    /// rollback groups (checkpoint, kill, start...) completed, or a rollback started.
    static func startedMoves(_ graph: StepGraph, _ resume: ResumeState) -> Set<String> {
        Set(graph.rollbacks.filter { group in
            resume.triggeredRollbacks.contains(group.id) || group.armedBy.contains { resume.completed[$0] != nil }
        }.map(\.migration))
    }

    static func run(plan: Plan, planFile: String, graph: StepGraph, journal: MigPlanJournal.Journal, secrets: [String],
                    options: ApplyOptions) async throws -> ApplyResult {
        let runID = newJournalID()
        // A testing aid (docs/resume.md): checked before anything runs, inert when unset.
        let fault = try FaultInjection.from(environment: options.environment, graph: graph)
        let resume = try await options.resumeRunID.asyncMap { try await resumeState($0, graph: graph, journal: journal) }
        var record = (try? RunRecord.forPlanFile(URL(fileURLWithPath: planFile), planName: plan.name, command: options.command, id: runID))
            ?? RunRecord(id: runID, planName: plan.name, planPath: planFile, planSHA256: "", command: options.command)
        record.command = options.command
        do {
            try await journal.beginRun(record)
        } catch {
            throw ApplyError(.journalUnreachable, "could not record the run in the journal: \(error)")
        }
        options.onRunID?(runID)
        if let fault {
            // Never silent: the operator sees it, and the journal says this run was meant to die.
            FileHandle.standardError.write(Data("migplan: \(FaultInjection.environmentVariable)=\(fault) is set: this process will SIGKILL itself (a testing aid, docs/resume.md)\n".utf8))
            try? await journal.appendAudit(AuditEvent(runID: runID, action: "fault-injection.armed", subject: fault.description))
        }
        let sessions = SessionPool(plan: plan, environment: options.environment,
                                   lanes: SessionPool.lanes(for: graph, parallelism: options.parallelism))
        let recorder = CommandRecorder()
        let runner = LiveStepRunner(plan: plan, graph: graph, sessions: sessions, recorder: recorder, hooks: options.hooks)
        runner.resumed = resume != nil
        if let resume { runner.seedPreMoveReports(from: resume.completed) }
        let journalObserver = JournalObserver(runID: runID, journal: journal, graph: graph, recorder: recorder, secrets: secrets)
        // The runner learns of abandoned steps first (before the journal writes), so that the
        // rollback the executor may start next knows.
        // An injected fault kills the process once the journal (and the progress display) have
        // recorded the boundary: last in line.
        let observers: [any ExecutionObserver] = [AbandonedStepObserver(runner: runner), journalObserver]
            + (options.observer.map { [$0] } ?? []) + (fault.map { [FaultInjectionObserver($0)] } ?? [])
        let observer: any ExecutionObserver = FanOutObserver(observers)
        let instances = plan.migrations.flatMap { plan.instanceNames(of: $0) }

        var result = ApplyResult(runID: runID, outcome: .failed, changed: false, report: nil, metrics: [], problems: [],
                                 journalWriteFailures: [])
        do {
            result = try await journal.withContainerLocks(instances, runID: runID, timeout: options.lockTimeout,
                                                          refuseIfHeldBy: options.resumeRunID) {
                try await journal.appendAudit(AuditEvent(runID: runID, action: "locks.acquired", subject: instances.joined(separator: ",")))
                if let previous = options.resumeRunID {
                    // The locks are ours, so the resumed run's process is gone (its session locks
                    // went with its connection): a run killed without writing its end is recorded
                    // as interrupted, and this run as resuming it.
                    try await journal.recordResumption(of: previous, by: runID)
                }
                var r = ApplyResult(runID: runID, outcome: .failed, changed: false, report: nil, metrics: [], problems: [],
                                    journalWriteFailures: [])
                let convergence: ConvergenceReport
                do {
                    // A resumed run whose predecessor never started a move (it found the container
                    // already on its destination, or died first) treats a container found on its
                    // destination only as converged, like a fresh run: re-probing such a move would
                    // re-checkpoint a container that is no longer on the source, fail, and roll
                    // back onto nothing. Moves the predecessor had started are re-probed.
                    convergence = try await runner.assessConvergence(
                        markConverged: true, excluding: resume.map { Self.startedMoves(graph, $0) } ?? [])
                } catch {
                    r.problems = ["probing where the containers run failed: \(error)"]
                    return r
                }
                if resume == nil && !convergence.problems.isEmpty {
                    r.outcome = .refused
                    r.problems = convergence.problems
                    return r
                }
                let executor = Executor(runner: runner, observer: observer)
                let report = await executor.run(
                    graph, options: ExecutionOptions(runID: runID, parallelism: options.parallelism, resume: resume),
                    stop: options.stop)
                r.report = report
                r.changed = report.changedAnything
                r.outcome = report.succeeded ? .succeeded : (report.stopped ? .stopped : .failed)
                r.problems = report.finishOrder.compactMap { id in
                    if case .failed(let f)? = report.outcomes[id] { return JournalRedaction.redact("\(id): \(f.message)", secrets: secrets) }
                    return nil
                }
                return r
            }
        } catch let e as JournalError where e.code == .lockTimeout {
            await sessions.closeAll()
            try? await journal.endRun(RunEnd(runID: runID, outcome: "failed", detail: e.description))
            throw ApplyError(.locked, e.description)
        } catch {
            await sessions.closeAll()
            try? await journal.endRun(RunEnd(runID: runID, outcome: "failed", detail: String(describing: error)))
            throw error
        }
        await sessions.closeAll()
        result.metrics = await journalObserver.metrics
        result.journalWriteFailures = await journalObserver.writeFailures
        let outcome: String
        switch result.outcome {
        case .succeeded: outcome = result.changed ? "succeeded" : "unchanged"
        case .failed: outcome = (result.report?.rolledBack.isEmpty ?? true) ? "failed" : "rolled-back"
        case .stopped: outcome = "stopped"
        case .refused: outcome = "refused"
        }
        let detail = result.problems.isEmpty ? nil : JournalRedaction.redact(result.problems.joined(separator: "\n"), secrets: secrets)
        do {
            try await journal.endRun(RunEnd(runID: runID, outcome: outcome, detail: detail))
        } catch {
            result.journalWriteFailures.append("run end: \(error)")
        }
        return result
    }
}

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        switch self {
        case .some(let v): return try await transform(v)
        case .none: return nil
        }
    }
}
