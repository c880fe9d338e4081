import Foundation
import MigPlanBasics
import MigPlanRuntime
import MigPlanSSH
import Testing

/// The lab (docs/lab.md) as the integration tests see it.
enum Lab {
    /// `MIGPLAN_SKIP_LAB=1` skips the integration suites (CI never sets it).
    static let skipped = ProcessInfo.processInfo.environment["MIGPLAN_SKIP_LAB"] == "1"

    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let labDir: String = ProcessInfo.processInfo.environment["MIGPLAN_LAB_DIR"] ?? repoRoot + "/.lab"

    struct Absent: Error, CustomStringConvertible {
        var description: String
    }

    static func address(_ host: String) -> String {
        "10.77.0.\(10 + Int(host.dropFirst("instance".count))!)"
    }

    /// An SSH connection to a lab host with the controller's key and the lab's known_hosts, the
    /// paper's algorithms. Fails with a message saying to run `scripts/lab up` when the lab is absent.
    static func connect(_ host: String) async throws -> SSHConnection {
        let key = labDir + "/keys/controller_ed25519"
        guard FileManager.default.fileExists(atPath: key) else {
            throw Absent(description: "the lab is not up (\(key) missing): run `scripts/lab up` (or set MIGPLAN_SKIP_LAB=1 to skip lab tests)")
        }
        // A few attempts: other suites may be restarting a lab daemon (`scripts/lab up` repairs).
        var lastError: (any Error)?
        for attempt in 0..<4 {
            if attempt > 0 { try await Task.sleep(for: .seconds(2)) }
            do {
                return try await SSHConnection.connect(
                    to: SSHEndpoint(hostName: host, address: address(host)),
                    identity: SSHIdentity(privateKeyPath: key), knownHostsPath: labDir + "/known_hosts")
            } catch {
                lastError = error
            }
        }
        throw Absent(description: "cannot reach lab host \(host) (\(lastError.map { "\($0)" } ?? "?")): run `scripts/lab up`")
    }

    /// Runs a local program (no shell), blocking a dedicated thread, not the cooperative pool.
    static func runLocal(_ argv: [String], stdin: String? = nil) async throws -> CommandOutput {
        try await LocalProcess.run(argv, stdin: stdin)
    }

    /// Installs a workload's runc bundle (rootfs + config.json) on a host with workloads/build.
    static func installBundle(_ workload: String, on host: String, name: String, args: [String]) async throws {
        let out = try await runLocal([repoRoot + "/workloads/build", "bundle", workload, host, "--name", name, "--"] + args)
        guard out.succeeded else { throw Absent(description: "workloads/build bundle failed: \(out.stderrText)") }
    }

    /// Imports a workload's Docker image into a host's dockerd with workloads/build.
    static func installImage(_ workload: String, on host: String) async throws {
        let out = try await runLocal([repoRoot + "/workloads/build", "image", workload, host])
        guard out.succeeded else { throw Absent(description: "workloads/build image failed: \(out.stderrText)") }
    }
}

/// Runs commands inside a lab host's namespaces without SSH: `scripts/lab exec HOST -- sh -c CMD`.
struct LocalNamespaceRunner: CommandRunner {
    let hostName: String

    func run(_ command: String, timeout: Duration?) async throws -> CommandOutput {
        try await LocalProcess.run([Lab.repoRoot + "/scripts/lab", "exec", hostName, "--", "sh", "-c", command], timeout: timeout)
    }
}

enum LocalProcess {
    struct Failure: Error, CustomStringConvertible { var description: String }

    /// Run argv on a dedicated thread; stdout/stderr go to temporary files (no pipe can fill up).
    static func run(_ argv: [String], stdin: String? = nil, timeout: Duration? = nil) async throws -> CommandOutput {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<CommandOutput, any Error>) in
            let thread = Thread {
                do {
                    cont.resume(returning: try runBlocking(argv, stdin: stdin, timeout: timeout))
                } catch {
                    cont.resume(throwing: error)
                }
            }
            thread.start()
        }
    }

    private static func runBlocking(_ argv: [String], stdin: String?, timeout: Duration?) throws -> CommandOutput {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-local-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let outURL = dir.appendingPathComponent("out"), errURL = dir.appendingPathComponent("err"), inURL = dir.appendingPathComponent("in")
        try Data().write(to: outURL)
        try Data().write(to: errURL)
        try Data((stdin ?? "").utf8).write(to: inURL)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        p.standardError = try FileHandle(forWritingTo: errURL)
        p.standardInput = try FileHandle(forReadingFrom: inURL)
        try p.run()
        if let timeout {
            let deadline = Date().addingTimeInterval(Double(timeout.components.seconds) + 1)
            while p.isRunning {
                if Date() > deadline {
                    p.terminate()
                    p.waitUntilExit()
                    throw Failure(description: "\(argv.joined(separator: " ")): timed out after \(timeout)")
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
        p.waitUntilExit()
        return CommandOutput(exitStatus: p.terminationStatus, stdout: Array(try Data(contentsOf: outURL)),
                             stderr: Array(try Data(contentsOf: errURL)))
    }
}

/// What a migplan workload answers (workloads/lib/mpworkload.py); every field optional but `boot`.
struct WorkloadAnswer: Decodable, Sendable {
    var workload: String?
    var boot: String
    var pid: Int?
    var served: Int
    var ok: Bool?
    var error: String?
    // memhog
    var counter: Int?
    var digest: String?
    var expected: String?
    var intact: Bool?
    var sizeBytes: Int?
    // face
    var samples: Int?
    var modelDigest: String?
    var recognized: Int?
    var label: String?
    var distance: Double?
    var detected: Bool?
    // clock
    var host: String?
    var ticks: Int?
}

enum Workload {
    static func stateDir(_ container: String) -> String { "/var/lib/migplan/state/\(container)" }

    /// Send one request through the spool in /var/lib/migplan/state/NAME and wait for its answer
    /// (one round trip: write the request atomically, poll for the response, print it).
    static func ask(_ runner: any CommandRunner, _ container: String, id: String, request: String = #"{"op":"report"}"#,
                    waitSeconds: Int = 60) async throws -> WorkloadAnswer {
        let d = ShellQuote.quote(stateDir(container))
        let i = ShellQuote.quote(id + ".json")
        let cmd = "set -e; mkdir -p \(d)/requests \(d)/responses; rm -f \(d)/responses/\(i); "
            + "printf '%s' \(ShellQuote.quote(request)) > \(d)/requests/.\(ShellQuote.quote(id)).tmp; mv \(d)/requests/.\(ShellQuote.quote(id)).tmp \(d)/requests/\(i); "
            + "n=0; while [ ! -f \(d)/responses/\(i) ] && [ $n -lt \(waitSeconds * 20) ]; do sleep 0.05; n=$((n+1)); done; "
            + "cat \(d)/responses/\(i)"
        let out = try await runner.run(cmd, timeout: .seconds(waitSeconds + 10))
        guard out.succeeded else {
            throw LocalProcess.Failure(description: "\(runner.hostName): no answer from \(container) to \(request) within \(waitSeconds)s: \(out.stderrText)")
        }
        do {
            return try JSONDecoder().decode(WorkloadAnswer.self, from: Data(out.stdout))
        } catch {
            throw LocalProcess.Failure(description: "\(runner.hostName): bad answer from \(container): \(out.stdoutText)")
        }
    }

    /// Empty the state directory (requests, responses, reports of earlier runs).
    static func resetState(_ runner: any CommandRunner, _ container: String) async throws {
        let d = ShellQuote.quote(stateDir(container))
        _ = try await runner.run("rm -rf \(d) && mkdir -p \(d)/requests \(d)/responses", timeout: .seconds(30))
    }
}

/// Durations of one move, printed by the tests (figures for docs and reports).
struct MoveFigures: CustomStringConvertible {
    var checkpoint: Duration = .zero
    var transfer: Duration = .zero
    var bytes: Int64 = 0
    var restore: Duration = .zero

    var description: String {
        let mb = Double(bytes) / 1_000_000
        let secs = Double(transfer.components.seconds) + Double(transfer.components.attoseconds) / 1e18
        return "checkpoint \(checkpoint), transfer \(String(format: "%.1f", mb)) MB in \(transfer) (\(String(format: "%.0f", secs > 0 ? mb / secs : 0)) MB/s), restore \(restore)"
    }
}
