import ArgumentParser
import Foundation
import MigPlanActions
import MigPlanEngine

/// `migplan apply PLAN`: moves the plan's containers, journaling everything.
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Move the plan's containers (checkpoint, transfer, restore), recording every step in the journal.",
        discussion: """
        Loads and validates the plan, compiles it into its step graph (see `migplan plan`), opens the \
        journal (apply refuses to run without it), takes a lock per container, probes where each \
        container runs, and runs the steps: probe → act → verify, retrying what may succeed on a \
        second try, rolling back a move that failed after its checkpoint. A container already \
        running on its destination is left alone; one running on neither host or on both is an \
        error and nothing is touched. SIGINT/SIGTERM stop at a safe point.

        Exit status: 0 success (with --detailed-exitcode: nothing needed changing), 3 with \
        --detailed-exitcode when changes were applied, 1 failed or rolled back (or the journal \
        is unreachable, or a lock could not be taken), 2 usage error.

          . .lab/env; migplan apply plans/face-multiuser.yaml
          migplan apply --format json plans/clock-stateless.yaml > events.jsonl
          migplan apply --resume 1f0c... plans/face-stateful.yaml
        """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @Argument(help: "The plan file.")
    var plan: String

    @Option(name: .long, help: "Most steps in flight at once, and most SSH connections opened to one host.")
    var parallelism: Int = 4

    @Option(name: .long, help: "Continue the failed or interrupted run RUN_ID (completed steps are re-probed, not re-done).")
    var resume: String?

    @Option(name: .long, help: "Seconds to wait for another run's container locks before giving up.")
    var lockTimeout: Int = 30

    @Flag(name: .long, help: "Exit 3 when changes were applied, 0 when nothing needed changing.")
    var detailedExitcode = false

    @Flag(name: .shortAndLong, help: "Print only errors and the final line.")
    var quiet = false

    @Option(name: .long, help: "Progress output: text (stderr) or json (one event per line on stdout).")
    var format: Format = .text

    func validate() throws {
        if parallelism < 1 { throw ValidationError("--parallelism must be at least 1.") }
        if lockTimeout < 0 { throw ValidationError("--lock-timeout must not be negative.") }
        if let resume, resume.isEmpty { throw ValidationError("--resume needs a run id.") }
    }

    func run() async throws {
        let mode: ApplyProgress.Mode
        if format == .json { mode = .json } else if quiet { mode = .quiet } else { mode = isatty(STDERR_FILENO) == 1 ? .terminal : .lines }
        var options = ApplyOptions()
        options.parallelism = parallelism
        options.resumeRunID = resume
        options.lockTimeout = .seconds(lockTimeout)
        options.observer = ApplyProgress(mode: mode)
        options.command = (["migplan"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        let stop = options.stop
        let signals = SignalStop.install(stop)
        defer { signals.cancel() }
        let result: ApplyResult
        do {
            result = try await ApplySession.apply(planFile: plan, options: options)
        } catch {
            if format == .json {
                ApplyProgress.writeJSON(["event": "error", "message": String(describing: error)], to: .standardOutput)
            }
            FileHandle.standardError.write(Data("migplan: error: \(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        if format == .json {
            var o: [String: Any] = ["event": "result", "runID": result.runID, "outcome": result.outcome.rawValue,
                                    "changed": result.changed, "problems": result.problems]
            // ContainerMetrics encodes flat: migration, container, flow and the paper's metrics.
            o["metrics"] = result.metrics.compactMap { m in
                (try? JSONEncoder().encode(m)).flatMap { try? JSONSerialization.jsonObject(with: $0) }
            }
            ApplyProgress.writeJSON(o, to: .standardOutput)
        } else {
            if !quiet && !result.metrics.isEmpty {
                FileHandle.standardError.write(Data(ReportFormatter.text(result.metrics.map(ReportRow.init)).utf8))
            }
            FileHandle.standardError.write(Data("migplan: \(result.summary)\n".utf8))
        }
        for failure in result.journalWriteFailures.prefix(5) {
            FileHandle.standardError.write(Data("migplan: warning: journal: \(failure)\n".utf8))
        }
        let status = result.exitStatus(detailed: detailedExitcode)
        if status != 0 { throw ExitCode(status) }
    }
}

/// SIGINT / SIGTERM → a stop at the next safe point (a second signal is ignored: the rollback must finish).
final class SignalStop: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []

    static func install(_ stop: StopSignal) -> SignalStop {
        let s = SignalStop()
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                FileHandle.standardError.write(Data("\nmigplan: signal \(sig): stopping at the next safe point\n".utf8))
                stop.request()
            }
            source.resume()
            s.sources.append(source)
        }
        return s
    }

    func cancel() {
        for s in sources { s.cancel() }
        sources = []
    }
}
