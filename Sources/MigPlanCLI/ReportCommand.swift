import ArgumentParser
import Foundation
import MigPlanActions
import MigPlanJournal

/// One row of the paper's metrics table.
struct ReportRow: CarriesPaperMetrics, Encodable {
    var container: String
    var flow: String
    var paperMetrics: PaperMetrics

    init(_ m: ContainerMetrics) {
        container = m.container == "*" ? "\(m.migration):*" : m.container
        flow = m.flow
        paperMetrics = m.paperMetrics
    }

    init(_ m: JournalReader.Metric) {
        container = m.container
        flow = m.flow
        paperMetrics = m.paperMetrics
    }

    private enum CodingKeys: String, CodingKey { case container, flow }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(container, forKey: .container)
        try c.encode(flow, forKey: .flow)
        try paperMetrics.encode(to: encoder)   // flat: report --format json keeps one object per row
    }
}

enum ReportFormatter {
    static func text(_ rows: [ReportRow]) -> String {
        var out = ""
        let stateful = rows.filter { $0.flow == "stateful" }
        let stateless = rows.filter { $0.flow != "stateful" }
        if !stateful.isEmpty {
            var t = [["CONTAINER", "TOTAL", "DOWNTIME", "CHECKPOINT", "TRANSFER", "SIZE", "UPLOAD SPEED", "RESUME"]]
            for r in stateful {
                t.append([r.container, JournalCLI.secondsText(r.totalMigrationTime), JournalCLI.secondsText(r.downtime),
                          JournalCLI.secondsText(r.checkpointDuration), JournalCLI.secondsText(r.fileTransferDuration),
                          JournalCLI.bytes(r.transferSizeBytes), JournalCLI.rate(r.uploadSpeedBytesPerSecond),
                          JournalCLI.secondsText(r.resumeDuration)])
            }
            out += "stateful (the paper's Table 3 / Figures 9-13):\n" + JournalCLI.table(t, indent: "  ")
        }
        if !stateless.isEmpty {
            var t = [["CONTAINER", "KILL", "START", "DOWNTIME", "TOTAL"]]
            for r in stateless {
                t.append([r.container, JournalCLI.secondsText(r.killDuration), JournalCLI.secondsText(r.startDuration),
                          JournalCLI.secondsText(r.downtime), JournalCLI.secondsText(r.totalMigrationTime)])
            }
            out += "stateless (the paper's Table 2):\n" + JournalCLI.table(t, indent: "  ")
        }
        return out
    }

    static func csv(_ rows: [ReportRow]) -> String {
        var t = [["container", "flow", "total_migration_time_s", "downtime_s", "file_transfer_duration_s", "transfer_size_bytes",
                  "upload_speed_bytes_per_s", "checkpoint_duration_s", "resume_duration_s", "kill_duration_s", "start_duration_s"]]
        for r in rows {
            t.append([r.container, r.flow, JournalCLI.seconds(r.totalMigrationTime), JournalCLI.seconds(r.downtime),
                      JournalCLI.seconds(r.fileTransferDuration), r.transferSizeBytes.map(String.init) ?? "",
                      r.uploadSpeedBytesPerSecond.map { String(format: "%.0f", $0) } ?? "", JournalCLI.seconds(r.checkpointDuration),
                      JournalCLI.seconds(r.resumeDuration), JournalCLI.seconds(r.killDuration), JournalCLI.seconds(r.startDuration)])
        }
        return JournalCLI.csv(t)
    }
}

/// `migplan report RUN | --last`: the paper's metrics of a run, from the journal.
struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Show the paper's migration metrics of a run (total time, downtime, transfer, checkpoint, resume).",
        discussion: """
        Reads the journal (where --plan's journal section says, or --journal CONNINFO / \
        $MIGPLAN_JOURNAL). Stateful moves: total migration time, downtime, file transfer duration, \
        transfer size, upload speed, checkpoint duration, resume duration; stateless moves: kill, \
        start, downtime, total. A multi-container move also has a MIGRATION:* row for the whole move.

          migplan report --plan plans/face-multiuser.yaml --last
          migplan report --plan plans/face-multiuser.yaml 1f0c2a --format csv
        """)

    @OptionGroup var connection: JournalConnectionOptions

    @Argument(help: "The run id (or a unique prefix).")
    var run: String?

    @Flag(name: .long, help: "The most recent run (of --plan's plan when given).")
    var last = false

    @Option(name: .long, help: "Output format: text, json or csv.")
    var format: JournalCLI.Format = .text

    func validate() throws {
        if (run == nil) == (!last) { throw ValidationError("Give a run id or --last (not both).") }
    }

    func run() async throws {
        try await JournalCLI.run {
            let (c, plan) = try await JournalCLI.connect(connection)
            let reader = JournalReader(connection: c)
            let id: String
            if let run {
                id = run
            } else {
                guard let newest = try await reader.runs(planName: plan?.name, limit: 1).first else {
                    await c.close()
                    throw JournalCLIError("no runs recorded" + (plan.map { " for plan \($0.name)" } ?? ""))
                }
                id = newest.id
            }
            let detail = try await reader.run(id)
            await c.close()
            let rows = detail.metrics.map(ReportRow.init)
            switch format {
            case .json:
                struct Out: Encodable { var run: JournalReader.Run; var metrics: [ReportRow] }
                print(try JournalCLI.json(Out(run: detail.run, metrics: rows)))
            case .csv:
                print(ReportFormatter.csv(rows), terminator: "")
            case .text:
                let r = detail.run
                print("run \(r.id)  plan \(r.planName)  outcome \(r.outcome)  started \(r.startedAt)  duration \(JournalCLI.secondsText(r.durationSeconds))")
                if rows.isEmpty {
                    print("no metrics recorded (nothing moved in this run)")
                } else {
                    print(ReportFormatter.text(rows), terminator: "")
                }
            }
        }
    }
}
