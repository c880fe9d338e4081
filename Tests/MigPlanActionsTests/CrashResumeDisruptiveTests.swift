import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanGraph
import MigPlanJournal
import MigPlanModel
import Testing

/// The real `migplan` executable, run as a child process (a SIGKILL must not kill the test runner).
enum CrashLab {
    struct Exit: Sendable {
        var status: Int32
        var killedBySignal: Bool
        var stdout: String
        var stderr: String
        var seconds: Double
    }

    /// `migplan` next to the test bundle in the build directory (`swift test` builds every product).
    static func executable() throws -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // The test runner may be inside `migplanPackageTests.xctest/` (a bundle directory).
        if dir.lastPathComponent.hasSuffix(".xctest") { dir.deleteLastPathComponent() }
        let candidate = dir.appendingPathComponent("migplan").path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw ApplyLab.Failure(description: "\(candidate) is missing: run `swift build --product migplan` (with the same --scratch-path) before these tests")
        }
        return candidate
    }

    /// Whether `migplan journal init` ran in this process (a fresh lab's database has no tables
    /// yet: the binary, unlike the in-process tests, uses the default schema).
    nonisolated(unsafe) static var journalReady = false
    static let journalLock = NSLock()

    /// Runs `migplan ARGS` with the lab's journal password and `extra` in its environment; before
    /// the first `apply`, `migplan journal init --plan PLAN` (idempotent).
    static func migplan(_ args: [String], extra: [String: String] = [:]) async throws -> Exit {
        if args.first == "apply", let plan = args.last, !journalLock.withLock({ journalReady }) {
            let initialized = try await run(["journal", "init", "--plan", plan], extra: [:])
            guard initialized.status == 0 else {
                throw ApplyLab.Failure(description: "migplan journal init failed: \(initialized.stderr)")
            }
            journalLock.withLock { journalReady = true }
        }
        return try await run(args, extra: extra)
    }

    static func run(_ args: [String], extra: [String: String]) async throws -> Exit {
        let path = try executable()
        var env = try ApplyLab.applyEnvironment()
        env.removeValue(forKey: FaultInjection.environmentVariable)
        for (k, v) in extra { env[k] = v }
        let environment = env
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Exit, any Error>) in
            let thread = Thread {
                do {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: path)
                    p.arguments = args
                    p.environment = environment
                    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cr-run-\(UUID().uuidString)")
                    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                    defer { try? FileManager.default.removeItem(at: dir) }
                    let outURL = dir.appendingPathComponent("out"), errURL = dir.appendingPathComponent("err")
                    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
                    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
                    p.standardOutput = try FileHandle(forWritingTo: outURL)
                    p.standardError = try FileHandle(forWritingTo: errURL)
                    p.standardInput = FileHandle.nullDevice
                    let start = Date()
                    try p.run()
                    p.waitUntilExit()
                    continuation.resume(returning: Exit(
                        status: p.terminationStatus, killedBySignal: p.terminationReason == .uncaughtSignal,
                        stdout: String(decoding: (try? Data(contentsOf: outURL)) ?? Data(), as: UTF8.self),
                        stderr: String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self),
                        seconds: Date().timeIntervalSince(start)))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.start()
        }
    }

    struct Variant: Sendable {
        var name: String
        var compression: String
        var archive: String
    }

    static let relayNone = Variant(name: "cr-memhog", compression: "none", archive: "single")
    static let relayZlibPerContainer = Variant(name: "cr-memhogz", compression: "zlib\nlevel: 1", archive: "per-container")

    /// A one-container stateful runc memhog move instance5 → instance6 (relay).
    static func plan(_ v: Variant) throws -> String {
        try ApplyLab.writeRuncPlan(
            v.name, from: "instance5", to: "instance6",
            settings: ApplyLab.statefulSettings(compression: v.compression, archive: v.archive), directory: "cr-plan")
    }

    static func graph(_ v: Variant) throws -> StepGraph {
        try PlanCompiler.compile(try PlanLoader.loadValid(file: try plan(v))).validated()
    }

    /// Steps from the checkpoint to the destination's verification: the container is frozen or
    /// moving, and a crash there is what resume must get right.
    static let freezeKinds: Set<String> = ["checkpoint", "archive", "transfer", "verifyDigest", "unpack", "restore", "verifyRunning"]

    /// Every boundary of the move: kill-after each forward step, kill-before each step of the
    /// freeze window. `short`: kill-after the steps of the freeze window only.
    static func boundaries(_ v: Variant, short: Bool = false) -> [Boundary] {
        guard let g = try? graph(v) else { return [Boundary(variant: v.name, fault: "plan-not-compiled")] }
        if short {
            return g.steps.filter { freezeKinds.contains($0.action.kind) }.map { Boundary(variant: v.name, fault: "kill-after:\($0.id)") }
        }
        var result = g.steps.map { Boundary(variant: v.name, fault: "kill-after:\($0.id)") }
        do {
            result += g.steps.filter { freezeKinds.contains($0.action.kind) }.map { Boundary(variant: v.name, fault: "kill-before:\($0.id)") }
        }
        return result
    }

    struct Boundary: Sendable, CustomTestStringConvertible {
        var variant: String
        var fault: String
        var testDescription: String { fault }
    }

    static func variant(named name: String) -> Variant { name == relayNone.name ? relayNone : relayZlibPerContainer }

    /// Installs the memhog bundle on both hosts (once) and starts it on the source.
    static func prepare(_ name: String) async throws {
        for host in ["instance5", "instance6"] {
            await ApplyLab.wipe(name, on: host)
            _ = try? await ApplyLab.exec(host, "rm -rf /var/lib/migplan/archives/\(name).d /dev/shm/migplan/\(host)/\(name) /dev/shm/migplan/\(host)/restore/\(name).*")
            let present = try await ApplyLab.exec(host, "test -f /var/lib/migplan/bundles/\(name)/config.json").succeeded
            if !present {
                try await ApplyLab.installBundle("memhog", on: host, name: name,
                                                 args: ["--mb", "10", "--mode", "half", "--fraction", "0.05", "--period", "0.5"])
            }
        }
        try await ApplyLab.startRunc(name, on: "instance5")
    }

    static func json(_ text: String) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    /// The newest run of the plan (`migplan runs`).
    static func newestRun(plan: String) async throws -> [String: Any] {
        let out = try await migplan(["runs", "--plan", plan, "--format", "json", "--limit", "1"])
        guard out.status == 0, let runs = json(out.stdout) as? [[String: Any]], let first = runs.first else {
            throw ApplyLab.Failure(description: "migplan runs failed (\(out.status)): \(out.stderr)")
        }
        return first
    }

    static func show(_ run: String, plan: String) async throws -> [String: Any] {
        let out = try await migplan(["show", "--plan", plan, run, "--format", "json"])
        guard out.status == 0, let detail = json(out.stdout) as? [String: Any] else {
            throw ApplyLab.Failure(description: "migplan show \(run) failed (\(out.status)): \(out.stderr)")
        }
        return detail
    }

    static func statuses(_ detail: [String: Any]) -> [String: String] {
        var result: [String: String] = [:]
        for step in detail["steps"] as? [[String: Any]] ?? [] {
            if let key = step["stepKey"] as? String, let status = step["status"] as? String { result[key] = status }
        }
        return result
    }
}

extension ApplyLabSuites {
/// The controller SIGKILLed at every step boundary of a stateful move, then `apply --resume RUN`:
/// the move completes or rolls back, the container never runs twice and never nowhere, its state
/// survives, nothing is left behind and the journal of both runs is complete. Runs the real
/// `migplan` (instance5 → instance6, containers `cr-*`).
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct CrashResumeDisruptiveTests {
    func crashThenResume(_ boundary: CrashLab.Boundary) async throws {
        try ApplyLab.requireLab()
        let v = CrashLab.variant(named: boundary.variant)
        let name = v.name
        let plan = try CrashLab.plan(v)
        try await CrashLab.prepare(name)
        let before = try await ApplyLab.report(name, on: "instance5")

        // 1. Killed at the boundary.
        let killed = try await CrashLab.migplan(["apply", "--quiet", plan], extra: [FaultInjection.environmentVariable: boundary.fault])
        #expect(killed.killedBySignal && killed.status == SIGKILL,
                "\(boundary.fault): expected death by SIGKILL, got status \(killed.status): \(killed.stderr.suffix(800))")
        let onSource = try await ApplyLab.isRunning(name, on: "instance5")
        let onDestination = try await ApplyLab.isRunning(name, on: "instance6")
        #expect(!(onSource && onDestination), "\(boundary.fault): the container runs on both hosts after the crash")
        let crashedRun = try await CrashLab.newestRun(plan: plan)
        let crashedID = try #require(crashedRun["id"] as? String)
        #expect(crashedRun["outcome"] as? String == "running", "a killed run never writes its end")

        // 2. Resumed: its locks died with its connection, so no waiting for the lock timeout.
        let resumed = try await CrashLab.migplan(["apply", "--quiet", "--lock-timeout", "45", "--resume", crashedID, plan])
        #expect(!resumed.killedBySignal && (resumed.status == 0 || resumed.status == 1),
                "\(boundary.fault): resume exited \(resumed.status): \(resumed.stderr.suffix(1500))")
        #expect(resumed.seconds < 40, "the resume took \(resumed.seconds) s: did it wait for the killed run's locks?")
        let resumedRun = try await CrashLab.newestRun(plan: plan)
        let resumedID = try #require(resumedRun["id"] as? String)
        #expect(resumedID != crashedID)
        let outcome = resumedRun["outcome"] as? String ?? "?"
        let completed = outcome == "succeeded" || outcome == "unchanged"
        #expect(completed || outcome == "rolled-back",
                "\(boundary.fault): resumed run ended \(outcome): \(resumedRun["detail"] ?? "") \(resumed.stderr.suffix(1500))")
        if resumed.status == 1 { #expect(outcome == "rolled-back", "exit 1 only for a rollback") }

        // 3. Exactly one running copy, where the outcome says, with the same process and its state.
        let nowOnSource = try await ApplyLab.isRunning(name, on: "instance5")
        let nowOnDestination = try await ApplyLab.isRunning(name, on: "instance6")
        #expect(nowOnSource != nowOnDestination, "\(boundary.fault): running on source \(nowOnSource), destination \(nowOnDestination)")
        if completed { #expect(nowOnDestination, "\(boundary.fault): the completed move must leave it on the destination") }
        if outcome == "rolled-back" { #expect(nowOnSource, "\(boundary.fault): a rollback must leave it on the source") }
        let host = nowOnDestination ? "instance6" : "instance5"
        let after = try await ApplyLab.report(name, on: host)
        #expect(after["boot"] as? String == before["boot"] as? String, "\(boundary.fault): a different process answers: state lost")
        #expect((after["counter"] as? Int ?? -1) >= (before["counter"] as? Int ?? 0), "\(boundary.fault): the counter went back")
        #expect(after["intact"] as? Bool != false)

        // 4. Nothing left behind.
        for h in ["instance5", "instance6"] {
            let left = try await ApplyLab.leftovers(of: name, on: h)
            #expect(left.isEmpty, "\(boundary.fault): left on \(h): \(left)")
        }

        // 5. The journal: the killed run ends `interrupted` (resumed by the new run), none of its
        //    steps stays `running`, the new run names the run it resumed and ended with an outcome,
        //    and every forward step of the graph has a final status in one of the two runs.
        let first = try await CrashLab.show(crashedID, plan: plan)
        let second = try await CrashLab.show(resumedID, plan: plan)
        let firstRun = first["run"] as? [String: Any] ?? [:]
        #expect(firstRun["outcome"] as? String == "interrupted")
        #expect((firstRun["detail"] as? String ?? "").contains("resumed by run \(resumedID)"))
        #expect(first["resumedBy"] as? [String] == [resumedID])
        #expect(second["resumes"] as? String == crashedID)
        #expect((second["run"] as? [String: Any])?["endedAt"] as? String != nil, "the resumed run has an end")
        let s1 = CrashLab.statuses(first), s2 = CrashLab.statuses(second)
        #expect(!s1.values.contains("running") && !s2.values.contains("running"), "\(boundary.fault): steps left running: \(s1) \(s2)")
        let final: Set<String> = ["changed", "unchanged", "skipped", "failed"]
        for step in try CrashLab.graph(v).steps {
            let ended = final.contains(s1[step.id] ?? "") || final.contains(s2[step.id] ?? "")
            #expect(ended, "\(boundary.fault): \(step.id) has no final status (killed run: \(s1[step.id] ?? "-"), resumed: \(s2[step.id] ?? "-"))")
        }

        for h in ["instance5", "instance6"] { await ApplyLab.wipe(name, on: h) }
    }

    @Test("SIGKILL at a step boundary, then apply --resume: one copy, same process, nothing left, journal complete (relay, no compression)",
          arguments: CrashLab.boundaries(CrashLab.relayNone))
    func crashAtBoundaryThenResume(_ boundary: CrashLab.Boundary) async throws {
        try await crashThenResume(boundary)
    }

    @Test("SIGKILL after each step of the freeze window, then apply --resume (relay, zlib 1, per-container archives)",
          arguments: CrashLab.boundaries(CrashLab.relayZlibPerContainer, short: true))
    func crashAfterStepThenResumeZlibPerContainer(_ boundary: CrashLab.Boundary) async throws {
        try await crashThenResume(boundary)
    }

    @Test func resumingARunWhoseControllerStillHoldsItsLocksIsRefusedAtOnce() async throws {
        try ApplyLab.requireLab()
        let v = CrashLab.relayNone
        let plan = try CrashLab.plan(v)
        try await CrashLab.prepare(v.name)
        let g = try CrashLab.graph(v)
        let first = try #require(g.steps.first?.id)
        let killed = try await CrashLab.migplan(["apply", "--quiet", plan], extra: [FaultInjection.environmentVariable: "kill-after:\(first)"])
        #expect(killed.killedBySignal)
        let crashedID = try #require(try await CrashLab.newestRun(plan: plan)["id"] as? String)

        // Its controller "still runs": this test's own session holds the lock in its name.
        let journal = try await MigPlanJournal.Journal.open(
            config: ApplySession.journalConfig(try PlanLoader.loadValid(file: plan).journal!), password: try ApplyLab.password())
        let refused = try await journal.withContainerLocks([v.name], runID: crashedID, timeout: .seconds(5)) {
            try await CrashLab.migplan(["apply", "--quiet", "--lock-timeout", "60", "--resume", crashedID, plan])
        }
        await journal.close()
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("run \(crashedID) is still running"), "\(refused.stderr)")
        #expect(refused.seconds < 30, "refused only after \(refused.seconds) s: it waited for the lock timeout")
        #expect(try await ApplyLab.isRunning(v.name, on: "instance5"), "nothing was touched")

        // Once that controller is gone, the resume runs.
        let resumed = try await CrashLab.migplan(["apply", "--quiet", "--resume", crashedID, plan])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try await ApplyLab.isRunning(v.name, on: "instance6"))
        for h in ["instance5", "instance6"] { await ApplyLab.wipe(v.name, on: h) }
    }

    /// Killed after the source was cleaned up, then the resume killed before it re-recorded
    /// anything: resuming the resume still knows the move was verified (it inherits what the
    /// first run completed) and must not re-checkpoint, roll back, or remove the only copy.
    @Test func resumingAKilledResumeInheritsWhatTheFirstRunCompleted() async throws {
        try ApplyLab.requireLab()
        let v = CrashLab.relayNone
        let plan = try CrashLab.plan(v)
        try await CrashLab.prepare(v.name)
        let before = try await ApplyLab.report(v.name, on: "instance5")
        let g = try CrashLab.graph(v)
        let cleanup = try #require(g.steps.first { $0.action.kind == "cleanupSource" }?.id)
        let preflight = try #require(g.steps.first?.id)
        let first = try await CrashLab.migplan(["apply", "--quiet", plan], extra: [FaultInjection.environmentVariable: "kill-after:\(cleanup)"])
        #expect(first.killedBySignal)
        let firstID = try #require(try await CrashLab.newestRun(plan: plan)["id"] as? String)
        let second = try await CrashLab.migplan(["apply", "--quiet", "--resume", firstID, plan],
                                                extra: [FaultInjection.environmentVariable: "kill-before:\(preflight)"])
        #expect(second.killedBySignal)
        let secondID = try #require(try await CrashLab.newestRun(plan: plan)["id"] as? String)
        #expect(secondID != firstID)
        let third = try await CrashLab.migplan(["apply", "--quiet", "--resume", secondID, plan])
        #expect(third.status == 0, "\(third.stderr.suffix(1500))")
        #expect(!(try await ApplyLab.isRunning(v.name, on: "instance5")))
        #expect(try await ApplyLab.isRunning(v.name, on: "instance6"))
        let after = try await ApplyLab.report(v.name, on: "instance6")
        #expect(after["boot"] as? String == before["boot"] as? String)
        let secondRun = try await CrashLab.show(secondID, plan: plan)
        #expect((secondRun["run"] as? [String: Any])?["outcome"] as? String == "interrupted")
        for h in ["instance5", "instance6"] {
            #expect(try await ApplyLab.leftovers(of: v.name, on: h).isEmpty)
            await ApplyLab.wipe(v.name, on: h)
        }
    }

    /// A finished move applied again (everything `unchanged`) and killed, then resumed: the
    /// resume must not re-probe the move as if it were under way (it re-checkpointed a container
    /// no longer on the source, failed, and its rollback removed the only running copy).
    @Test func resumingAKilledReapplyOfAFinishedMoveChangesNothing() async throws {
        try ApplyLab.requireLab()
        let v = CrashLab.relayNone
        let plan = try CrashLab.plan(v)
        try await CrashLab.prepare(v.name)
        let before = try await ApplyLab.report(v.name, on: "instance5")
        let moved = try await CrashLab.migplan(["apply", "--quiet", plan])
        #expect(moved.status == 0, "\(moved.stderr.suffix(1500))")
        let preflight = try #require(try CrashLab.graph(v).steps.first?.id)
        let killed = try await CrashLab.migplan(["apply", "--quiet", plan], extra: [FaultInjection.environmentVariable: "kill-after:\(preflight)"])
        #expect(killed.killedBySignal)
        let killedID = try #require(try await CrashLab.newestRun(plan: plan)["id"] as? String)
        let resumed = try await CrashLab.migplan(["apply", "--quiet", "--detailed-exitcode", "--resume", killedID, plan])
        #expect(resumed.status == 0, "nothing to change: \(resumed.stderr.suffix(1500))")
        #expect(!(try await ApplyLab.isRunning(v.name, on: "instance5")))
        #expect(try await ApplyLab.isRunning(v.name, on: "instance6"))
        let after = try await ApplyLab.report(v.name, on: "instance6")
        #expect(after["boot"] as? String == before["boot"] as? String)
        for h in ["instance5", "instance6"] {
            #expect(try await ApplyLab.leftovers(of: v.name, on: h).isEmpty)
            await ApplyLab.wipe(v.name, on: h)
        }
    }

    @Test func anUnknownStepInTheFaultHookIsRefusedBeforeAnythingRuns() async throws {
        try ApplyLab.requireLab()
        let v = CrashLab.relayNone
        let plan = try CrashLab.plan(v)
        let out = try await CrashLab.migplan(["apply", "--quiet", plan], extra: [FaultInjection.environmentVariable: "kill-after:no-such-step"])
        #expect(out.status == 1 && !out.killedBySignal)
        #expect(out.stderr.contains("no step no-such-step"), "\(out.stderr)")
    }
}
}
