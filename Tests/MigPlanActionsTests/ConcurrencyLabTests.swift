import Foundation
@testable import MigPlanActions
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import MigPlanSSH
import Testing

/// Issue 5's acceptance: "100 steps over 8 lab hosts with --parallelism 8 complete with a journal
/// that agrees with what ran". Real sshd on instance1..instance8, the real executor, the journal
/// observer `apply` uses, the lab's PostgreSQL (a throwaway schema).
extension ApplyLabSuites {
    @Suite struct ConcurrencyLabTests {
        static let hostCount = 8
        static let layers = 10
        static let width = 10
        static let parallelism = 8

        /// 10 layers of 10 steps; step (layer, k) runs on instance((layer*10+k) % 8 + 1) and depends
        /// on steps k and k+1 (mod 10) of the layer before, so order matters across hosts.
        static func graph() -> StepGraph {
            func id(_ layer: Int, _ k: Int) -> StepID { "c\(k)-l\(layer).append@\(host(layer, k))" }
            func host(_ layer: Int, _ k: Int) -> String { "instance\((layer * width + k) % hostCount + 1)" }
            var steps: [Step] = []
            for layer in 0..<layers {
                for k in 0..<width {
                    let deps = layer == 0 ? [] : [id(layer - 1, k), id(layer - 1, (k + 1) % width)]
                    let instance = ContainerInstance(name: "c\(k)-l\(layer)", container: "c\(k)", runtime: "runc")
                    steps.append(Step(id: id(layer, k), location: .host(host(layer, k)),
                                      action: .start(InstanceAction(instance: instance)), dependsOn: deps,
                                      migration: "concurrency", timeoutSeconds: 60))
                }
            }
            return StepGraph(plan: "concurrency", steps: steps)
        }

        struct StepCheckFailed: Error, CustomStringConvertible {
            var description: String
        }

        /// Counts steps in flight (as the executor reports them) and acts in flight (as the runner
        /// sees them), keeping the maxima.
        actor InFlight {
            private(set) var steps = 0, maxSteps = 0, acts = 0, maxActs = 0
            private(set) var started: [StepID] = []
            func stepStarted(_ id: StepID) { steps += 1; maxSteps = max(maxSteps, steps); started.append(id) }
            func stepFinished() { steps -= 1 }
            func actStarted() { acts += 1; maxActs = max(maxActs, acts) }
            func actFinished() { acts -= 1 }
        }

        struct TrackingObserver: ExecutionObserver {
            let inFlight: InFlight
            func handle(_ event: ExecutionEvent) async {
                switch event {
                case .stepStarted(let id, _): await inFlight.stepStarted(id)
                case .stepFinished: await inFlight.stepFinished()
                default: break
                }
            }
        }

        /// Probe: is the step's line already in the host's log? Act: append `ID START_NS END_NS`
        /// around a 50 ms sleep. Verify: the line is there exactly once. One SSH connection per
        /// host, opened once; commands recorded for the journal like `apply`'s runner does.
        struct AppendRunner: StepRunner {
            let connections: [String: SSHConnection]
            let recorder: CommandRecorder
            let logPath: String
            let inFlight: InFlight

            func runner(_ context: StepContext) throws -> RecordingRunner {
                guard case .host(let h) = context.step.location, let c = connections[h] else {
                    throw StepCheckFailed(description: "\(context.step.id): no connection for \(context.step.location)")
                }
                return RecordingRunner(connection: c, recorder: recorder, pool: nil)
            }

            func scoped<T: Sendable>(_ context: StepContext, _ body: () async throws -> T) async throws -> T {
                try await AttemptScope.$key.withValue(CommandRecorder.key(context.step.id, context.attempt)) { try await body() }
            }

            func probe(_ context: StepContext) async throws -> ProbeResult {
                let r = try runner(context)
                let out = try await scoped(context) {
                    try await r.run("grep -q \("^\(context.step.id) ".shellQuoted) \(logPath.shellQuoted) 2>/dev/null", timeout: .seconds(30))
                }
                return out.exitStatus == 0 ? .done : .needed
            }

            func act(_ context: StepContext) async throws -> [String: String] {
                let r = try runner(context)
                let line = "echo \(context.step.id.shellQuoted) \"$s\" \"$(date +%s%N)\" >> \(logPath.shellQuoted)"
                await inFlight.actStarted()
                let out: CommandOutput
                do {
                    out = try await scoped(context) { try await r.run("s=$(date +%s%N); sleep 0.05; \(line)", timeout: .seconds(30)) }
                } catch {
                    await inFlight.actFinished()
                    throw error
                }
                await inFlight.actFinished()
                guard out.succeeded else {
                    throw StepCheckFailed(description: "\(context.step.id): append exited \(out.exitStatus): \(out.stderrText)")
                }
                return ["host": r.hostName]
            }

            func verify(_ context: StepContext, outputs: [String: String]) async throws {
                let r = try runner(context)
                let out = try await scoped(context) {
                    try await r.run("grep -c \("^\(context.step.id) ".shellQuoted) \(logPath.shellQuoted)", timeout: .seconds(30))
                }
                let count = out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                guard count == "1" else {
                    throw StepCheckFailed(description: "\(context.step.id): its line is in \(logPath) \(count) times, not once")
                }
            }
        }

        static func connectAll() async throws -> [String: SSHConnection] {
            let known = (try? String(contentsOfFile: ApplyLab.labDir + "/known_hosts", encoding: .utf8)) ?? ""
            let missing = (1...hostCount).filter { n in
                !known.split(separator: "\n").contains { $0.hasPrefix("10.77.0.\(10 + n) ") }
            }
            guard missing.isEmpty else {
                throw ApplyLab.Failure(description: "the lab has fewer than \(hostCount) hosts (no instance\(missing.map(String.init).joined(separator: ", instance")) "
                    + "in \(ApplyLab.labDir)/known_hosts): run `scripts/lab up --hosts \(hostCount)`")
            }
            var connections: [String: SSHConnection] = [:]
            for n in 1...hostCount {
                let name = "instance\(n)"
                do {
                    connections[name] = try await SSHConnection.connect(
                        to: SSHEndpoint(hostName: name, address: "10.77.0.\(10 + n)"),
                        identity: SSHIdentity(privateKeyPath: ApplyLab.labDir + "/keys/controller_ed25519"),
                        knownHostsPath: ApplyLab.labDir + "/known_hosts")
                } catch {
                    for c in connections.values { c.close() }
                    throw ApplyLab.Failure(description: "cannot reach lab host \(name) (\(error)): run `scripts/lab up --hosts \(hostCount)`")
                }
            }
            return connections
        }

        @Test(.enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1"), .timeLimit(.minutes(5)))
        func hundredStepsOverEightHostsWithParallelismEightMatchTheJournal() async throws {
            try ApplyLab.requireLab()
            let connections = try await Self.connectAll()
            let schema = try await ApplyLab.freshSchema()
            let runID = newJournalID()
            let logPath = "/var/lib/migplan/concurrency-\(runID).log"
            let spoolDir = FileManager.default.temporaryDirectory.appendingPathComponent("cc-spool-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: spoolDir) }

            var cleanupProblems: [String] = []
            do {
                try await runAndCheck(connections: connections, schema: schema, runID: runID, logPath: logPath, spoolDir: spoolDir)
            } catch {
                Issue.record(error)
            }
            for (name, c) in connections.sorted(by: { $0.key < $1.key }) {
                let out = try? await c.run("rm -f \(logPath.shellQuoted) && ! test -e \(logPath.shellQuoted)", timeout: .seconds(30))
                if out?.exitStatus != 0 { cleanupProblems.append(name) }
                c.close()
            }
            await ApplyLab.dropSchema(schema)
            #expect(cleanupProblems.isEmpty, "could not remove \(logPath) on \(cleanupProblems)")
        }

        func runAndCheck(connections: [String: SSHConnection], schema: String, runID: String, logPath: String,
                         spoolDir: URL) async throws {
            let graph = try Self.graph().validated()
            #expect(graph.steps.count == 100)
            #expect(Set(graph.steps.map(\.location)).count == Self.hostCount)

            var config = JournalConfig(host: "10.77.0.1", port: 5433, sslMode: .verifyFull, sslRootCert: ApplyLab.labDir + "/pg/ca.crt",
                                       connectTimeout: 5, applicationName: "migplan-concurrency-tests")
            config.schema = schema
            let journal = try await Journal.open(config: config, password: try ApplyLab.password(),
                                                 spool: JournalSpool(directory: spoolDir))
            try await journal.beginRun(RunRecord(id: runID, planName: graph.plan, planSHA256: String(repeating: "0", count: 64),
                                                 command: "test-concurrency"))
            let recorder = CommandRecorder()
            let journalObserver = JournalObserver(runID: runID, journal: journal, graph: graph, recorder: recorder)
            let inFlight = InFlight()
            let executor = Executor(
                runner: AppendRunner(connections: connections, recorder: recorder, logPath: logPath, inFlight: inFlight),
                observer: FanOutObserver([TrackingObserver(inFlight: inFlight), journalObserver]))
            let clock = ContinuousClock.now
            let report = await executor.run(graph, options: ExecutionOptions(runID: runID, parallelism: Self.parallelism))
            let elapsed = ContinuousClock.now - clock
            try await journal.endRun(RunEnd(runID: runID, outcome: report.succeeded ? "succeeded" : "failed"))
            let writeFailures = await journalObserver.writeFailures
            let spooling = await journal.isSpooling
            await journal.close()

            // What ran, as the executor saw it.
            let failures = report.outcomes.filter { $0.value != .changed }
            #expect(report.succeeded && failures.isEmpty, "steps not changed: \(failures)")
            #expect(report.outcomes.count == 100)
            #expect(report.finishOrder.count == 100 && Set(report.finishOrder).count == 100)
            #expect(writeFailures.isEmpty, "journal write failures: \(writeFailures)")
            #expect(!spooling, "the journal spooled records instead of writing them")

            let maxSteps = await inFlight.maxSteps, maxActs = await inFlight.maxActs
            let startedOrder = await inFlight.started
            #expect(maxSteps <= Self.parallelism, "\(maxSteps) steps in flight at once")
            #expect(maxActs <= Self.parallelism, "\(maxActs) acts in flight at once")
            #expect(maxSteps > 1, "the steps never ran concurrently")
            #expect(startedOrder.count == 100 && Set(startedOrder).count == 100)

            // What ran, as the hosts logged it: each host holds exactly its steps, once each.
            var interval: [StepID: (start: Int64, end: Int64)] = [:]
            for (name, c) in connections.sorted(by: { $0.key < $1.key }) {
                let out = try await c.run("cat \(logPath.shellQuoted)", timeout: .seconds(30))
                #expect(out.exitStatus == 0, "\(name): cannot read \(logPath): \(out.stderrText)")
                let lines = out.stdoutText.split(separator: "\n")
                let ids = lines.compactMap { $0.split(separator: " ").first.map(String.init) }
                let expected = graph.steps.filter { $0.location == .host(name) }.map(\.id)
                #expect(ids.count == expected.count, "\(name) logged \(ids.count) lines, expected \(expected.count)")
                #expect(Set(ids) == Set(expected), "\(name) logged \(Set(ids).symmetricDifference(expected).sorted()) wrongly")
                for line in lines {
                    let f = line.split(separator: " ")
                    guard f.count == 3, let s = Int64(f[1]), let e = Int64(f[2]) else {
                        Issue.record("\(name): malformed log line \(line)")
                        continue
                    }
                    interval[String(f[0])] = (s, e)
                }
            }
            // Dependency order held on the hosts' own clocks (one machine, one clock).
            for step in graph.steps {
                guard let mine = interval[step.id] else { continue }
                for dep in step.dependsOn {
                    guard let d = interval[dep] else { continue }
                    #expect(d.end <= mine.start, "\(step.id) started before its dependency \(dep) ended")
                }
            }
            // Never more than `parallelism` commands overlapped on the hosts either.
            var edges: [(time: Int64, delta: Int)] = []
            for i in interval.values {
                edges.append((i.start, 1))
                edges.append((i.end, -1))
            }
            // At equal times an end comes before a start (-1 < 1).
            edges.sort { (a: (time: Int64, delta: Int), b: (time: Int64, delta: Int)) -> Bool in
                a.time != b.time ? a.time < b.time : a.delta < b.delta
            }
            var overlap = 0, maxOverlap = 0
            for (_, delta) in edges { overlap += delta; maxOverlap = max(maxOverlap, overlap) }
            #expect(maxOverlap <= Self.parallelism, "\(maxOverlap) host commands overlapped")

            // What the journal says ran: exactly one record per step, with the outcome and the
            // attempt (its command and exit status) that ran.
            let c = try await ApplyLab.connect(schema: schema)
            let counts = try await c.execute("""
                SELECT (SELECT count(*) FROM steps WHERE run_id = $1), (SELECT count(DISTINCT step_key) FROM steps WHERE run_id = $1),
                       (SELECT count(*) FROM attempts WHERE run_id = $1), (SELECT count(*) FROM steps),
                       (SELECT count(*) FROM audit WHERE run_id = $1 AND action = 'step.changed')
                """, [runID])
            await c.close()
            #expect(counts.rows.first == ["100", "100", "100", "100", "100"], "steps, distinct keys, attempts, all steps, audits: \(counts.rows)")

            let detail = try await ApplyLab.runDetail(runID, schema: schema)
            #expect(detail.run.outcome == "succeeded")
            #expect(detail.steps.count == 100)
            #expect(Set(detail.steps.map(\.stepKey)) == Set(graph.steps.map(\.id)))
            let byKey = Dictionary(detail.steps.map { ($0.stepKey, $0) }, uniquingKeysWith: { a, _ in a })
            for step in graph.steps {
                guard let record = byKey[step.id] else { continue }
                guard case .host(let host) = step.location else { continue }
                #expect(record.status == "changed", "\(step.id): journal says \(record.status)")
                #expect(record.host == host, "\(step.id): journal host \(record.host ?? "nil")")
                #expect(record.attempts.count == 1, "\(step.id): \(record.attempts.count) attempts in the journal")
                if let a = record.attempts.first {
                    #expect(a.number == 1 && a.exitStatus == 0 && a.host == host && a.error == nil,
                            "\(step.id): attempt \(a.number) on \(a.host ?? "nil") exit \(a.exitStatus.map(String.init) ?? "nil")")
                    let commands = a.command ?? ""
                    #expect(commands.split(separator: "\n").count == 3 && commands.contains(">> \(logPath.shellQuoted)"),
                            "\(step.id): attempt commands \(commands)")
                }
                // The journal's own times agree with the dependencies.
                for dep in step.dependsOn {
                    if let d = byKey[dep], let ended = d.endedAt, let started = record.startedAt {
                        #expect(ended <= started, "journal: \(step.id) started \(started) before \(dep) ended \(ended)")
                    }
                }
            }
            print("concurrency: 100 steps on \(Self.hostCount) hosts, parallelism \(Self.parallelism): \(elapsed); "
                  + "max in flight \(maxSteps) steps, \(maxActs) acts, \(maxOverlap) host commands")
        }
    }
}
