import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanJournal
import Testing

/// Every suite of this target that uses the lab, nested here so that they never run at the same
/// time: `.serialized` covers nested suites, so the disruptive one (which kills instance2's sshd)
/// cannot overlap the others even when one `swift test` runs them all (`scripts/test` also runs
/// `*DisruptiveTests` in a later phase of their own).
@Suite(.serialized) struct ApplyLabSuites {}

/// The lab (docs/lab.md) for the apply integration tests. They run against the real lab and are
/// skipped only with `MIGPLAN_SKIP_LAB=1`; when the lab is absent they fail saying to run
/// `scripts/lab up`.
enum ApplyLab {
    static let environment = ProcessInfo.processInfo.environment
    static let skipped = environment["MIGPLAN_SKIP_LAB"] == "1"

    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let labDir: String = environment["MIGPLAN_LAB_DIR"] ?? repoRoot + "/.lab"

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The lab's journal password (from the environment or `.lab/pg/password`).
    static func password() throws -> String {
        if let p = environment["MIGPLAN_JOURNAL_PASSWORD"], !p.isEmpty { return p }
        guard let text = try? String(contentsOfFile: labDir + "/pg/password", encoding: .utf8) else {
            throw Failure(description: "the lab is not up (\(labDir)/pg/password missing): run `scripts/lab up` (or set MIGPLAN_SKIP_LAB=1 to skip lab tests)")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func requireLab() throws {
        for f in ["/keys/controller_ed25519", "/known_hosts", "/pg/ca.crt"] where !FileManager.default.fileExists(atPath: labDir + f) {
            throw Failure(description: "the lab is not up (\(labDir + f) missing): run `scripts/lab up` (or set MIGPLAN_SKIP_LAB=1 to skip lab tests)")
        }
    }

    /// Environment for `ApplySession`: ours plus the journal password.
    static func applyEnvironment() throws -> [String: String] {
        var env = environment
        env["MIGPLAN_JOURNAL_PASSWORD"] = try password()
        return env
    }

    /// Runs a local program on a dedicated thread (never blocking the cooperative pool).
    static func run(_ argv: [String]) async throws -> CommandOutput {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<CommandOutput, any Error>) in
            let thread = Thread {
                do {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: argv[0])
                    p.arguments = Array(argv.dropFirst())
                    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ap-run-\(UUID().uuidString)")
                    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                    defer { try? FileManager.default.removeItem(at: dir) }
                    let outURL = dir.appendingPathComponent("out"), errURL = dir.appendingPathComponent("err")
                    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
                    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
                    p.standardOutput = try FileHandle(forWritingTo: outURL)
                    p.standardError = try FileHandle(forWritingTo: errURL)
                    p.standardInput = FileHandle.nullDevice
                    try p.run()
                    p.waitUntilExit()
                    continuation.resume(returning: CommandOutput(
                        exitStatus: p.terminationStatus, stdout: [UInt8]((try? Data(contentsOf: outURL)) ?? Data()),
                        stderr: [UInt8]((try? Data(contentsOf: errURL)) ?? Data())))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.start()
        }
    }

    /// Runs `script` with sh inside a lab host's namespaces (`scripts/lab exec`).
    @discardableResult
    static func exec(_ host: String, _ script: String) async throws -> CommandOutput {
        try await run([repoRoot + "/scripts/lab", "exec", host, "--", "sh", "-c", script])
    }

    static func installBundle(_ workload: String, on host: String, name: String, args: [String]) async throws {
        let out = try await run([repoRoot + "/workloads/build", "bundle", workload, host, "--name", name, "--"] + args)
        guard out.succeeded else { throw Failure(description: "workloads/build bundle \(workload) \(host) failed: \(out.stderrText)") }
    }

    static func hasDockerImage(_ image: String, on host: String) async -> Bool {
        (try? await exec(host, "docker image inspect \(image.shellQuoted) >/dev/null 2>&1"))?.succeeded ?? false
    }

    /// Removes the container (runc or docker) and its leftovers on a host.
    static func wipe(_ name: String, on host: String, docker: Bool = false) async {
        let n = name.shellQuoted
        if docker {
            _ = try? await exec(host, "docker rm -f \(n) >/dev/null 2>&1; true")
        } else {
            _ = try? await exec(host, "runc delete --force \(n) >/dev/null 2>&1; true")
        }
        _ = try? await exec(host, "rm -rf /var/lib/migplan/checkpoints/\(n) /var/lib/migplan/restore/\(n) /var/lib/migplan/work/\(n) "
                              + "/var/lib/migplan/archives/\(n) /var/lib/migplan/archives/\(n).d /var/lib/migplan/archives/\(n).tar* "
                              + "/var/lib/migplan/incoming/\(n) /var/lib/migplan/incoming/\(n).d /var/lib/migplan/incoming/\(n).tar* "
                              + "/dev/shm/migplan/\(host)/\(n) /dev/shm/migplan/\(host)/restore/\(n).* /var/lib/migplan/restore/\(n).unpack-*; true")
    }

    /// What a move of migration `name` (tests name the migration after its container) may leave
    /// on a host: checkpoint images (and their tmpfs target), archives (single: NAME.tar[.zz],
    /// per-container: NAME.d/INSTANCE.tar[.zz]) with their side files, received archives, unpacked
    /// images. Empty when nothing is left.
    static func leftovers(of name: String, on host: String) async throws -> String {
        let n = name.shellQuoted
        let out = try await exec(host, "ls -d /var/lib/migplan/checkpoints/\(n) /var/lib/migplan/archives/\(n).tar* "
            + "/var/lib/migplan/archives/\(n).d /var/lib/migplan/incoming/\(n).tar* /var/lib/migplan/incoming/\(n).d "
            + "/var/lib/migplan/restore/\(n) /var/lib/migplan/restore/\(n).unpack-* /dev/shm/migplan/\(host)/\(n) "
            + "/dev/shm/migplan/\(host)/restore/\(n).* 2>/dev/null; true")
        return out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts a runc container from its bundle on a host and waits for its first report.
    static func startRunc(_ name: String, on host: String) async throws {
        let b = "/var/lib/migplan/bundles/\(name)".shellQuoted
        let out = try await exec(host, "runc delete --force \(name.shellQuoted) >/dev/null 2>&1; cd \(b) && runc run -d --bundle \(b) \(name.shellQuoted) </dev/null >/dev/null 2>&1")
        guard out.succeeded else { throw Failure(description: "runc run \(name) on \(host) failed: \(out.stderrText)") }
        _ = try await report(name, on: host)
    }

    static func startDocker(_ name: String, image: String, on host: String) async throws {
        let n = name.shellQuoted
        let s = "/var/lib/migplan/state/\(name)".shellQuoted
        let out = try await exec(host, "docker rm -f \(n) >/dev/null 2>&1; mkdir -p \(s)/requests \(s)/responses && "
            + "docker run -d --name \(n) --network none --security-opt seccomp=unconfined -v /usr:/usr:ro -v \(s):/state "
            + "-e MIGPLAN_HOST=\(host) -e MIGPLAN_CONTAINER=\(n) \(image.shellQuoted) >/dev/null")
        guard out.succeeded else { throw Failure(description: "docker run \(name) on \(host) failed: \(out.stderrText)") }
        _ = try await report(name, on: host)
    }

    static func isRunning(_ name: String, on host: String, docker: Bool = false) async throws -> Bool {
        let n = name.shellQuoted
        let cmd = docker ? "docker inspect --format '{{.State.Running}}' \(n) 2>/dev/null | grep -q true"
            : "runc state \(n) 2>/dev/null | grep -q '\"status\": \"running\"'"
        return try await exec(host, cmd).succeeded
    }

    /// The workload's report (JSON object) through its state directory.
    static func report(_ name: String, on host: String, timeoutSeconds: Int = 60) async throws -> [String: Any] {
        let d = "/var/lib/migplan/state/\(name)".shellQuoted
        let script = """
            id=t$$; printf '{"op":"report"}' > \(d)/requests/.$id.tmp && mv \(d)/requests/.$id.tmp \(d)/requests/$id.json || exit 1
            i=0; while [ ! -f \(d)/responses/$id.json ] && [ $i -lt \(timeoutSeconds * 10) ]; do sleep 0.1; i=$((i+1)); done
            cat \(d)/responses/$id.json && rm -f \(d)/responses/$id.json
            """
        let out = try await exec(host, script)
        guard out.succeeded, let obj = try? JSONSerialization.jsonObject(with: Data(out.stdout)) as? [String: Any] else {
            throw Failure(description: "\(name) on \(host) did not answer a report: \(out.stderrText)")
        }
        return obj
    }

    /// A plan in a temp dir pointing at the lab with absolute paths.
    static func writePlan(name: String, containers: String, migration: String,
                          hosts: String = "  instance1: {address: 10.77.0.11, key: controller}\n  instance2: {address: 10.77.0.12, key: controller}",
                          directory prefix: String = "ap-plan") throws -> String {
        let text = """
            apiVersion: migplan/v1
            name: \(name)
            ssh:
              knownHosts: \(labDir)/known_hosts
            keys:
              controller:
                path: \(labDir)/keys/controller_ed25519
            hosts:
            \(hosts)
            journal:
              host: 10.77.0.1
              port: 5433
              dbname: migplan
              user: migplan
              sslrootcert: \(labDir)/pg/ca.crt
              passwordEnv: MIGPLAN_JOURNAL_PASSWORD
            containers:
            \(containers)
            migrations:
            \(migration)
            """
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("\(name).yaml")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }

    /// A plan moving the runc container `name` (its bundle under /var/lib/migplan/bundles) from
    /// lab host `from` to `to`. `settings`: the migration's other keys, one per line, indented
    /// relative to each other only (`flow: stateful`, `transfer:`, `  path: relay`, ...).
    /// `hosts`: the plan's hosts block (default: `from` and `to` at their lab addresses).
    static func writeRuncPlan(_ name: String, from: String = "instance1", to: String = "instance2",
                              stateful: Bool = true, replicas: Int = 1, settings: String,
                              hosts: String? = nil, directory: String = "ap-plan") throws -> String {
        func address(_ host: String) -> String { "10.77.0.\(10 + (Int(host.dropFirst("instance".count)) ?? 0))" }
        let containers = ["  \(name):", "    runtime: runc", "    bundle: /var/lib/migplan/bundles/\(name)",
                          "    stateful: \(stateful)", "    replicas: \(replicas)"]
        let migration = ["  - name: \(name)", "    containers: [\(name)]", "    from: \(from)", "    to: \(to)"]
            + settings.split(separator: "\n").map { "    " + $0 }
        return try writePlan(
            name: name, containers: containers.joined(separator: "\n"), migration: migration.joined(separator: "\n"),
            hosts: hosts ?? [from, to].map { "  \($0): {address: \(address($0)), key: controller}" }.joined(separator: "\n"),
            directory: directory)
    }

    /// The settings of a stateful archive move for `writeRuncPlan`: `compression` may carry more
    /// lines (`zlib\nlevel: 1`); two attempts, quick backoff.
    static func statefulSettings(compression: String = "none", archive: String = "single", path: String = "relay",
                                 onFailure: String = "rollback") -> String {
        let compressionLines = compression.split(separator: "\n").map { "  " + $0 }
        return (["flow: stateful", "transfer:"]
            + ["  compression: " + compressionLines[0].dropFirst(2)] + compressionLines.dropFirst()
            + ["  archive: \(archive)", "  path: \(path)", "retry:", "  attempts: 2", "  initialBackoff: 1s", "  maxBackoff: 2s",
               "onFailure: \(onFailure)"]).joined(separator: "\n")
    }

    /// A throwaway journal schema with migplan's tables.
    static func freshSchema() async throws -> String {
        let name = "ap_" + newJournalID().replacingOccurrences(of: "-", with: "").prefix(12)
        let c = try await connect(schema: name)
        try await JournalSchema.migrate(c)
        await c.close()
        return name
    }

    static func connect(schema: String?) async throws -> JournalConnection {
        var config = JournalConfig(host: "10.77.0.1", port: 5433, sslMode: .verifyFull, sslRootCert: labDir + "/pg/ca.crt",
                                   connectTimeout: 5, applicationName: "migplan-apply-tests")
        config.schema = schema
        do {
            return try await JournalConnection.connect(config, password: try password())
        } catch {
            throw Failure(description: "cannot reach the lab's PostgreSQL (\(error)): run `scripts/lab up`")
        }
    }

    static func dropSchema(_ name: String) async {
        guard let c = try? await connect(schema: nil) else { return }
        _ = try? await c.execute("DROP SCHEMA IF EXISTS \(name) CASCADE")
        await c.close()
    }

    static func runDetail(_ runID: String, schema: String) async throws -> JournalReader.RunDetail {
        let c = try await connect(schema: schema)
        defer { Task { await c.close() } }
        return try await JournalReader(connection: c).run(runID)
    }
}
