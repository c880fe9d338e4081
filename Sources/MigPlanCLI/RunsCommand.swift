import ArgumentParser
import Foundation
import MigPlanJournal

/// `migplan runs`: recent runs from the journal.
struct RunsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runs",
        abstract: "List recent runs recorded in the journal.",
        discussion: """
        With --plan, lists that plan's runs (its journal section says where the journal is); \
        --all lists every plan's runs in the same journal.

          migplan runs --plan plans/face-stateful.yaml
          migplan runs --plan PLAN --all --limit 50 --format csv
        """)

    @OptionGroup var connection: JournalConnectionOptions

    @Option(name: .long, help: "How many runs, newest first.")
    var limit: Int = 20

    @Flag(name: .long, help: "With --plan: list runs of every plan, not only this one.")
    var all = false

    @Option(name: .long, help: "Output format: text, json or csv.")
    var format: JournalCLI.Format = .text

    func validate() throws {
        if limit < 1 { throw ValidationError("--limit must be at least 1.") }
    }

    func run() async throws {
        try await JournalCLI.run {
            let (c, plan) = try await JournalCLI.connect(connection)
            let runs = try await JournalReader(connection: c).runs(planName: all ? nil : plan?.name, limit: limit)
            await c.close()
            switch format {
            case .json:
                print(try JournalCLI.json(runs))
            case .csv:
                var rows = [["id", "plan", "outcome", "started_at", "ended_at", "duration_s", "operator", "command", "plan_sha256", "git_commit", "migplan_version"]]
                for r in runs {
                    rows.append([r.id, r.planName, r.outcome, r.startedAt, r.endedAt ?? "", JournalCLI.seconds(r.durationSeconds), r.operator,
                                 r.command, r.planSHA256, r.gitCommit ?? "", r.migplanVersion])
                }
                print(JournalCLI.csv(rows), terminator: "")
            case .text:
                if runs.isEmpty {
                    print("no runs recorded")
                    return
                }
                var rows = [["RUN", "PLAN", "OUTCOME", "STARTED (UTC)", "DURATION", "OPERATOR"]]
                for r in runs {
                    rows.append([r.id, r.planName, r.outcome, String(r.startedAt.prefix(19)).replacingOccurrences(of: "T", with: " "),
                                 JournalCLI.secondsText(r.durationSeconds), r.operator])
                }
                print(JournalCLI.table(rows), terminator: "")
            }
        }
    }
}
