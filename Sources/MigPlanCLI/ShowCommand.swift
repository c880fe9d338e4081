import ArgumentParser
import Foundation
import MigPlanJournal

/// `migplan show RUN`: one run's steps, attempts, timings and metrics.
struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one run: steps, attempts, timings and metrics.",
        discussion: """
        RUN is a run id or a unique prefix of one (as `migplan runs` prints).

          migplan show --plan PLAN 3f2a9c
          migplan show --plan PLAN 3f2a9c --format csv --section metrics
        """)

    @Argument(help: ArgumentHelp("Run id or unique prefix.", valueName: "run"))
    var run: String

    @OptionGroup var connection: JournalConnectionOptions

    @Option(name: .long, help: "Output format: text, json or csv.")
    var format: JournalCLI.Format = .text

    enum Section: String, ExpressibleByArgument, CaseIterable { case steps, metrics }

    @Option(name: .long, help: "For csv: which table, steps (one row per attempt) or metrics.")
    var section: Section = .steps

    func run() async throws {
        try await JournalCLI.run {
            let (c, _) = try await JournalCLI.connect(connection)
            let detail = try await JournalReader(connection: c).run(run)
            await c.close()
            switch format {
            case .json: print(try JournalCLI.json(detail))
            case .csv: print(Self.csv(detail, section: section), terminator: "")
            case .text: print(Self.text(detail), terminator: "")
            }
        }
    }

    static func csv(_ d: JournalReader.RunDetail, section: Section) -> String {
        switch section {
        case .steps:
            var rows = [["step", "kind", "host", "container", "status", "started_at", "ended_at", "duration_s",
                         "attempt", "attempt_host", "command", "exit_status", "attempt_duration_s", "error"]]
            for s in d.steps {
                let head = [s.stepKey, s.kind, s.host ?? "", s.container ?? "", s.status, s.startedAt ?? "", s.endedAt ?? "",
                            JournalCLI.seconds(s.durationSeconds)]
                if s.attempts.isEmpty { rows.append(head + ["", "", "", "", "", ""]) }
                for a in s.attempts {
                    rows.append(head + [String(a.number), a.host ?? "", a.command ?? "", a.exitStatus.map(String.init) ?? "",
                                        JournalCLI.seconds(a.durationSeconds), a.error ?? ""])
                }
            }
            return JournalCLI.csv(rows)
        case .metrics:
            var rows = [["container", "flow", "total_migration_time_s", "downtime_s", "file_transfer_duration_s", "transfer_size_bytes",
                         "upload_speed_bytes_per_s", "checkpoint_duration_s", "resume_duration_s", "kill_duration_s", "start_duration_s"]]
            for m in d.metrics {
                rows.append([m.container, m.flow, JournalCLI.seconds(m.totalMigrationTime), JournalCLI.seconds(m.downtime),
                             JournalCLI.seconds(m.fileTransferDuration), m.transferSizeBytes.map(String.init) ?? "",
                             m.uploadSpeedBytesPerSecond.map { String(format: "%.0f", $0) } ?? "", JournalCLI.seconds(m.checkpointDuration),
                             JournalCLI.seconds(m.resumeDuration), JournalCLI.seconds(m.killDuration), JournalCLI.seconds(m.startDuration)])
            }
            return JournalCLI.csv(rows)
        }
    }

    static func text(_ d: JournalReader.RunDetail) -> String {
        let r = d.run
        var out = "run \(r.id)\n"
        out += "  plan      \(r.planName)\(r.planPath.map { " (\($0))" } ?? "")\n"
        out += "  plan file sha256 \(r.planSHA256)\(r.gitCommit.map { ", git \($0)" } ?? "")\n"
        out += "  operator  \(r.operator), migplan \(r.migplanVersion), \(r.command)\n"
        out += "  started   \(r.startedAt)\n"
        out += "  ended     \(r.endedAt ?? "-") (\(JournalCLI.secondsText(r.durationSeconds)))\n"
        out += "  outcome   \(r.outcome)\(r.detail.map { ": \($0)" } ?? "")\n"
        if let previous = d.resumes { out += "  resumes   run \(previous)\n" }
        if let later = d.resumedBy, !later.isEmpty { out += "  resumed by run \(later.joined(separator: ", run "))\n" }
        out += "\nsteps (\(d.steps.count)):\n"
        var rows = [["STATUS", "STEP", "HOST", "DURATION", "ATTEMPTS"]]
        for s in d.steps {
            rows.append([s.status, s.stepKey, s.host ?? "-", JournalCLI.secondsText(s.durationSeconds), String(s.attempts.count)])
        }
        out += JournalCLI.table(rows, indent: "  ")
        let attempts = d.steps.flatMap { s in s.attempts.map { (s, $0) } }
        if !attempts.isEmpty {
            out += "\nattempts:\n"
            for (s, a) in attempts {
                let status = a.exitStatus.map { "exit \($0)" } ?? "no exit status"
                out += "  \(s.stepKey) #\(a.number) on \(a.host ?? "-"): \(status), \(JournalCLI.secondsText(a.durationSeconds))"
                if let cmd = a.command {
                    // A step may run several commands: one per line, indented under the attempt.
                    out += cmd.contains("\n") ? "\n      " + cmd.replacingOccurrences(of: "\n", with: "\n      ") : ": \(cmd)"
                }
                out += "\n"
                if let e = a.error, !e.isEmpty { out += "    error: \(e.replacingOccurrences(of: "\n", with: "\n      "))\n" }
            }
        }
        if !d.metrics.isEmpty {
            out += "\nmetrics:\n"
            var m = [["CONTAINER", "FLOW", "TOTAL", "DOWNTIME", "TRANSFER", "SIZE", "UPLOAD", "CHECKPOINT", "RESUME", "KILL", "START"]]
            for x in d.metrics {
                m.append([x.container, x.flow, JournalCLI.secondsText(x.totalMigrationTime), JournalCLI.secondsText(x.downtime),
                          JournalCLI.secondsText(x.fileTransferDuration), JournalCLI.bytes(x.transferSizeBytes),
                          JournalCLI.rate(x.uploadSpeedBytesPerSecond), JournalCLI.secondsText(x.checkpointDuration),
                          JournalCLI.secondsText(x.resumeDuration), JournalCLI.secondsText(x.killDuration), JournalCLI.secondsText(x.startDuration)])
            }
            out += JournalCLI.table(m, indent: "  ")
        }
        return out
    }
}
