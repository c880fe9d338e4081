import ArgumentParser
import Foundation
import MigPlanJournal

/// `migplan journal init|verify|flush`.
struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal",
        abstract: "Create, verify and flush the PostgreSQL journal.",
        discussion: """
        The journal records every run, step, attempt and metric in PostgreSQL over SSL \
        (docs/journal.md). Its connection comes from a plan's `journal` section (--plan) or a \
        libpq conninfo (--journal / $MIGPLAN_JOURNAL); the password from the environment variable \
        the plan names (default MIGPLAN_JOURNAL_PASSWORD).

          migplan journal init --plan PLAN     create or upgrade the tables
          migplan journal verify --plan PLAN   check the audit hash chain
          migplan journal flush --plan PLAN    write records spooled while the
                                               database was unreachable

        Exit status: 0 success (verify: the chain is intact), 1 failure (verify: a row was \
        edited, deleted or inserted), 2 usage error.
        """,
        subcommands: [JournalInitCommand.self, JournalVerifyCommand.self, JournalFlushCommand.self]
    )
}

struct JournalInitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create or upgrade the journal's tables (idempotent).")

    @OptionGroup var connection: JournalConnectionOptions

    func run() async throws {
        try await JournalCLI.run {
            let (c, _) = try await JournalCLI.connect(connection)
            let applied = try await JournalSchema.migrate(c)
            let tls = await c.tlsInfo()
            let over = tls.inUse ? "over \(tls.protocolVersion ?? "TLS")" : "WITHOUT TLS"
            let what = applied.isEmpty ? "already up to date" : "applied migration\(applied.count == 1 ? "" : "s") \(applied.map(String.init).joined(separator: ", "))"
            print("journal: \(c.config.target)\(c.config.schema.map { " schema \($0)" } ?? ""): schema version \(JournalSchema.latestVersion), \(what) (\(over))")
            await c.close()
        }
    }
}

struct JournalVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the audit table's hash chain; name every edited, deleted or inserted row.")

    @OptionGroup var connection: JournalConnectionOptions

    @Option(name: .long, help: "Output format: text or json.")
    var format: JournalCLI.Format = .text

    @Flag(name: .long, help: ArgumentHelp(
        "Do not compare with (or update) the audit head saved by the previous verify on this machine."))
    var noAnchor = false

    func validate() throws {
        if format == .csv { throw ValidationError("journal verify supports --format text or json.") }
    }

    struct Output: Encodable {
        var intact: Bool
        var rows: Int
        var headID: Int64?
        var headHash: String?
        var findings: [Finding]
        var protectionProblems: [String]
        var anchor: AuditChain.Anchor?
        struct Finding: Encodable {
            var row: Int64
            var kind: String
            var message: String
        }
    }

    func run() async throws {
        var intact = true
        try await JournalCLI.run {
            let plan = try connection.loadPlan()
            let config = try connection.config(plan: plan)
            let journal = try await Journal.open(config: config, password: try JournalCLI.password(for: config),
                                                 spool: connection.spool(for: config), flushSpool: false)
            let spool = connection.spool(for: config)
            let anchor = noAnchor ? nil : try spool.loadAnchor()
            let report = try await journal.verifyAudit(anchor: anchor)
            let protection = try await journal.auditProtectionProblems()
            await journal.close()
            intact = report.isIntact && protection.isEmpty
            // Remember the head of an intact chain: the next verify checks it is still there.
            if report.isIntact, !noAnchor, let id = report.headID, let hash = report.headHash {
                try spool.saveAnchor(AuditChain.Anchor(id: id, hash: hash))
            }
            switch format {
            case .json:
                let findings = report.findings.map { f -> Output.Finding in
                    let kind: String
                    switch f {
                    case .edited: kind = "edited"
                    case .editedAndRehashed: kind = "edited-rehashed"
                    case .deleted: kind = "deleted"
                    case .inserted: kind = "inserted"
                    case .brokenLink: kind = "broken-link"
                    case .rewritten: kind = "rewritten"
                    }
                    return Output.Finding(row: f.rowID, kind: kind, message: f.description)
                }
                print(try JournalCLI.json(Output(intact: report.isIntact, rows: report.rowCount, headID: report.headID,
                                                 headHash: report.headHash, findings: findings,
                                                 protectionProblems: protection, anchor: anchor)))
            default:
                for p in protection { print("audit: \(p)") }
                if report.isIntact {
                    let head = report.headID.map { ", head row \($0) \(report.headHash ?? "")" } ?? ""
                    print("audit chain intact: \(report.rowCount) rows\(head)")
                    if let anchor { print("  (row \(anchor.id) still carries the hash seen by the verify of \(anchor.recordedAt))") }
                } else {
                    for f in report.findings { print("audit: \(f)") }
                    print("audit chain BROKEN: \(report.findings.count) problem\(report.findings.count == 1 ? "" : "s") in \(report.rowCount) rows")
                }
            }
        }
        if !intact { throw ExitCode(MigPlanExit.failure) }
    }
}

struct JournalFlushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flush",
        abstract: "Write records spooled while the database was unreachable (idempotent).")

    @OptionGroup var connection: JournalConnectionOptions

    func run() async throws {
        try await JournalCLI.run {
            let plan = try connection.loadPlan()
            let config = try connection.config(plan: plan)
            let spool = connection.spool(for: config)
            let journal = try await Journal.open(config: config, password: try JournalCLI.password(for: config), spool: spool, flushSpool: false)
            let rejectedBefore = spool.rejectedCount
            let n = try await journal.flush()
            await journal.close()
            let rejected = spool.rejectedCount - rejectedBefore
            print(n == 0 ? "journal: nothing spooled (\(spool.fileURL.path))" : "journal: flushed \(n) spooled record\(n == 1 ? "" : "s") to \(config.target); spool emptied")
            if rejected > 0 {
                FileHandle.standardError.write(Data("migplan: error: the database refused \(rejected) record\(rejected == 1 ? "" : "s"); kept with the reasons in \(spool.rejectedURL.path)\n".utf8))
                throw ExitCode(MigPlanExit.failure)
            }
        }
    }
}
