import ArgumentParser
import Foundation
import MigPlanJournal
import MigPlanModel

/// Where `journal`, `runs` and `show` find the journal database: a plan's `journal` section, or a
/// libpq conninfo (`--journal` / `MIGPLAN_JOURNAL`). The password always comes from the
/// environment variable the plan names (default `MIGPLAN_JOURNAL_PASSWORD`).
struct JournalConnectionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Plan whose `journal` section locates the journal.", valueName: "plan"))
    var plan: String?

    @Option(name: .long, help: ArgumentHelp(
        "libpq conninfo of the journal, without password (instead of --plan; default $MIGPLAN_JOURNAL).", valueName: "conninfo"))
    var journal: String?

    @Option(name: .long, help: ArgumentHelp("PostgreSQL schema holding migplan's tables (default: public).", valueName: "name"))
    var schema: String?

    @Option(name: .long, help: ArgumentHelp(
        "Spool directory (default $XDG_STATE_HOME/migplan/spool or ~/.local/state/migplan/spool).", valueName: "dir"))
    var spoolDir: String?

    func validate() throws {
        if plan != nil && journal != nil { throw ValidationError("Give either --plan or --journal, not both.") }
    }

    /// The loaded plan, when `--plan` was given.
    func loadPlan() throws -> Plan? {
        guard let plan else { return nil }
        do {
            return try PlanLoader.loadValid(file: plan)
        } catch {
            throw JournalCLIError("\(plan): the plan is invalid (run `migplan validate \(plan)`):\n\(error)")
        }
    }

    func config(plan loaded: Plan?) throws -> JournalConfig {
        var config: JournalConfig
        if let loaded {
            guard let j = loaded.journal else {
                throw JournalCLIError("\(loaded.file): the plan has no `journal` section")
            }
            config = JournalCLI.config(from: j)
        } else if let conninfo = journal ?? ProcessInfo.processInfo.environment["MIGPLAN_JOURNAL"], !conninfo.isEmpty {
            config = try JournalConfig(conninfo: conninfo)
        } else {
            throw ValidationError("Say where the journal is: --plan PLAN, --journal CONNINFO or $MIGPLAN_JOURNAL.")
        }
        if let schema { config.schema = schema }
        return config
    }

    func spool(for config: JournalConfig) -> JournalSpool {
        JournalSpool(directory: spoolDir.map { URL(fileURLWithPath: $0) }, for: config)
    }
}

struct JournalCLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

enum JournalCLI {
    /// The plan's journal section as a connection configuration. The plan's sslmode is also the
    /// minimum: nothing later may weaken it.
    static func config(from j: MigPlanModel.Journal) -> JournalConfig {
        let mode = JournalSSLMode(rawValue: j.sslmode.rawValue) ?? .verifyFull
        return JournalConfig(host: j.host, port: j.port, database: j.dbname, user: j.user, sslMode: mode, minimumSSLMode: mode,
                             sslRootCert: j.sslrootcert, connectTimeout: max(1, Int(j.connectTimeout.components.seconds)),
                             applicationName: "migplan", passwordEnvironmentVariable: j.passwordEnv ?? "MIGPLAN_JOURNAL_PASSWORD")
    }

    /// The password from the configured environment variable; an error naming the variable when unset.
    static func password(for config: JournalConfig) throws -> String {
        guard let name = config.passwordEnvironmentVariable else { return "" }
        guard let value = config.password(), !value.isEmpty else {
            throw JournalCLIError("the journal password is expected in the environment variable \(name), which is not set (for the lab: `. .lab/env`)")
        }
        return value
    }

    static func connect(_ options: JournalConnectionOptions) async throws -> (JournalConnection, Plan?) {
        let plan = try options.loadPlan()
        let config = try options.config(plan: plan)
        return (try await JournalConnection.connect(config, password: try password(for: config)), plan)
    }

    /// Prints the error as `migplan: error: ...` and exits 1 (ArgumentParser's usage errors pass through).
    static func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let e as ExitCode {
            throw e
        } catch let e as ValidationError {
            throw e
        } catch {
            FileHandle.standardError.write(Data("migplan: error: \(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
    }

    // MARK: Output helpers

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json, csv }

    static func json<T: Encodable>(_ value: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(value), as: UTF8.self)
    }

    /// RFC 4180 CSV: fields with a comma, quote or line break are quoted, quotes doubled.
    static func csv(_ rows: [[String]]) -> String {
        rows.map { row in
            row.map { field in
                if field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
                    return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
                }
                return field
            }.joined(separator: ",")
        }.joined(separator: "\n") + "\n"
    }

    /// Left-aligned columns separated by two spaces.
    static func table(_ rows: [[String]], indent: String = "") -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for row in rows { for (i, f) in row.enumerated() { widths[i] = max(widths[i], f.count) } }
        return rows.map { row in
            indent + row.enumerated().map { i, f in i == row.count - 1 ? f : f.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    static func seconds(_ d: Double?) -> String { d.map { String(format: "%.3f", $0) } ?? "" }
    static func secondsText(_ d: Double?) -> String { d.map { String(format: "%.3f s", $0) } ?? "-" }
    static func bytes(_ n: Int64?) -> String {
        guard let n else { return "-" }
        if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / 1_048_576) }
        if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / 1024) }
        return "\(n) B"
    }
    static func rate(_ r: Double?) -> String { r.map { String(format: "%.1f MB/s", $0 / 1_000_000) } ?? "-" }
}
