import Foundation
import MigPlanJournal
import Testing

/// The lab's PostgreSQL (docs/lab.md): 10.77.0.1:5433, database and role `migplan`, SSL with the
/// lab CA. Integration tests run against it; they are skipped only when `MIGPLAN_SKIP_LAB=1`,
/// and fail (saying to run `scripts/lab up`) when the lab is absent.
enum LabDatabase {
    struct Absent: Error, CustomStringConvertible {
        var description: String
    }

    static let environment = ProcessInfo.processInfo.environment
    static var skip: Bool { environment["MIGPLAN_SKIP_LAB"] == "1" }

    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
    static var labDir: URL {
        if let d = environment["MIGPLAN_LAB_DIR"], !d.isEmpty { return URL(fileURLWithPath: d) }
        return repoRoot.appendingPathComponent(".lab")
    }
    static var host: String { environment["MIGPLAN_LAB_PG_HOST"] ?? "10.77.0.1" }
    static var port: Int { environment["MIGPLAN_LAB_PG_PORT"].flatMap { Int($0) } ?? 5433 }
    static var caPath: String { environment["MIGPLAN_LAB_PG_CA"] ?? labDir.appendingPathComponent("pg/ca.crt").path }
    static var labScript: String { repoRoot.appendingPathComponent("scripts/lab").path }

    static func password() throws -> String {
        if let p = environment["MIGPLAN_JOURNAL_PASSWORD"], !p.isEmpty { return p }
        let file = labDir.appendingPathComponent("pg/password")
        guard let text = try? String(contentsOf: file, encoding: .utf8) else {
            throw Absent(description: "the lab's PostgreSQL password (\(file.path)) is missing: run `scripts/lab up` (or set MIGPLAN_SKIP_LAB=1 to skip lab tests)")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A configuration for the lab server, in a schema of its own when `schema` is given.
    static func config(schema: String? = nil) throws -> JournalConfig {
        guard FileManager.default.fileExists(atPath: caPath) else {
            throw Absent(description: "the lab's CA certificate (\(caPath)) is missing: run `scripts/lab up` (or set MIGPLAN_SKIP_LAB=1 to skip lab tests)")
        }
        var c = JournalConfig(host: host, port: port, database: "migplan", user: "migplan", sslMode: .verifyFull,
                              sslRootCert: caPath, connectTimeout: 5, applicationName: "migplan-journal-tests")
        c.schema = schema
        return c
    }

    static func connect(schema: String? = nil) async throws -> JournalConnection {
        let c = try config(schema: schema)
        do {
            return try await JournalConnection.connect(c, password: try password())
        } catch let e as JournalError where e.code == .connection {
            throw Absent(description: "cannot reach the lab's PostgreSQL at \(host):\(port) (\(e.message)): run `scripts/lab up`")
        }
    }

    /// A fresh schema with migplan's tables; drop it with `dropSchema`.
    static func freshSchema() async throws -> String {
        let name = "jt_" + newJournalID().replacingOccurrences(of: "-", with: "").prefix(12)
        let c = try await connect(schema: name)
        try await JournalSchema.migrate(c)
        await c.close()
        return name
    }

    static func dropSchema(_ name: String) async {
        guard let c = try? await connect() else { return }
        // `name` was made by freshSchema (a plain identifier).
        _ = try? await c.execute("DROP SCHEMA IF EXISTS \(name) CASCADE")
        await c.close()
    }

    struct ProcessResult {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program to completion. Output goes through temporary files, not pipes: a daemon
    /// the program starts (pg_ctl start) may inherit descriptors and must not keep us waiting.
    static func run(_ executable: String, _ arguments: [String], environment extra: [String: String] = [:], stdin: String? = nil) throws -> ProcessResult {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-jt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let inURL = dir.appendingPathComponent("in"), outURL = dir.appendingPathComponent("out"), errURL = dir.appendingPathComponent("err")
        try Data((stdin ?? "").utf8).write(to: inURL)
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in extra { env[k] = v }
        p.environment = env
        let input = try FileHandle(forReadingFrom: inURL)
        let out = try FileHandle(forWritingTo: outURL)
        let err = try FileHandle(forWritingTo: errURL)
        defer {
            try? input.close()
            try? out.close()
            try? err.close()
        }
        p.standardInput = input
        p.standardOutput = out
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        return ProcessResult(status: p.terminationStatus,
                             stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                             stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
    }

    /// Runs SQL with psql as the PostgreSQL superuser over the server's Unix socket (what an
    /// administrator with shell access to the database machine can do).
    static func superuserPSQL(_ sql: String) throws -> ProcessResult {
        let data = labDir.appendingPathComponent("pg/data").resolvingSymlinksInPath()
        let socket = data.deletingLastPathComponent().appendingPathComponent("socket").path
        return try run("/usr/sbin/runuser", ["-u", "postgres", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                                             "-h", socket, "-p", String(port), "-d", "migplan"], stdin: sql)
    }

    /// Polls until a connection succeeds (after `pg start`), up to `timeout`.
    static func waitUntilReachable(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                let c = try await JournalConnection.connect(try config(), password: try password())
                await c.close()
                return
            } catch {
                if ContinuousClock.now >= deadline { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// Stops or starts the lab's PostgreSQL with `pg_ctl` on its data directory (as
    /// `scripts/lab pg stop|start` does, without waiting for the lab's lock), falling back to
    /// `scripts/lab pg` when the data directory is not where the lab keeps it.
    static func pg(_ action: String) throws -> ProcessResult {
        let data = labDir.appendingPathComponent("pg/data").resolvingSymlinksInPath()
        guard FileManager.default.fileExists(atPath: data.appendingPathComponent("PG_VERSION").path) else {
            return try run("/bin/bash", [labScript, "pg", action])
        }
        let log = data.deletingLastPathComponent().appendingPathComponent("log/postgres.log").path
        let pgctl = ["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", data.path]
        if action == "start" {
            // Something else (the lab's own repair) may have started it already.
            let status = try run("/usr/sbin/runuser", pgctl + ["status"])
            if status.status == 0 { return status }
        }
        if action == "stop" {
            return try run("/usr/sbin/runuser", pgctl + ["-w", "-t", "30", "-m", "fast", "stop"])
        }
        // Foundation's Process waits until every copy of a descriptor it gives the child is
        // closed; the postmaster would inherit one and keep it for its whole life. Close every
        // descriptor above 2 before pg_ctl starts the server.
        let closeAll = #"for fd in /proc/$$/fd/*; do n=${fd##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done 2>/dev/null; exec "$@""#
        return try run("/bin/bash", ["-c", closeAll, "bash", "/usr/sbin/runuser"] + pgctl + ["-w", "-t", "30", "-l", log, "start"])
    }
}
