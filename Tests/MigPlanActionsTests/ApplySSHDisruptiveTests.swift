import Foundation
import MigPlanActions
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanJournal
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension ApplyLabSuites {
/// Faults that disrupt the shared lab (run by `scripts/test` in a separate serial phase, after
/// every other suite): the destination's sshd is killed in the middle of a transfer. The lab is
/// repaired (`scripts/lab up`) whatever happens, so later tests have it.
@Suite(.serialized, .enabled(if: !ApplyLab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct ApplySSHDisruptiveTests {
    /// The pids of `root` and all its descendants (from /proc).
    static func processTree(_ root: pid_t) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = pid_t(fields[1]) { children[ppid, default: []].append(pid) }
        }
        var result: [pid_t] = []
        var queue = [root]
        while let next = queue.popLast() {
            result.append(next)
            queue += children[next] ?? []
        }
        return result
    }

    /// Kills instance2's sshd (the listener, found by its pid file and checked to be the lab's,
    /// and every session process under it: the transfer's connection dies with them).
    static func killDestinationSSHD() throws -> [pid_t] {
        let host = ApplyLab.labDir + "/hosts/instance2"
        let text = try String(contentsOfFile: host + "/sshd.pid", encoding: .utf8)
        guard let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else {
            throw ApplyLab.Failure(description: "no pid in \(host)/sshd.pid")
        }
        let cmdline = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
        guard cmdline.contains(host + "/sshd_config") else {
            throw ApplyLab.Failure(description: "pid \(pid) is not instance2's sshd (\(cmdline.replacingOccurrences(of: "\0", with: " ")))")
        }
        let tree = processTree(pid)
        for p in tree { _ = kill(p, SIGKILL) }
        return tree
    }

    @Test func destinationSSHDKilledDuringTheTransferRollsBackToTheSource() async throws {
        try ApplyLab.requireLab()
        let name = "ap-sshkill"
        var failure: (any Error)?
        do {
            try await run(name)
        } catch {
            failure = error
        }
        // Whatever happened: the lab gets its sshd back, and the test's containers go.
        let up = try await ApplyLab.run([ApplyLab.repoRoot + "/scripts/lab", "up"])
        await ApplyLab.wipe(name, on: "instance1")
        await ApplyLab.wipe(name, on: "instance2")
        #expect(up.succeeded, "scripts/lab up failed: \(up.stderrText)")
        if let failure { throw failure }
    }

    func run(_ name: String) async throws {
        // A large memhog (memhog.py holds under 256 MiB: randbytes overflows above), uncompressed, so that the transfer lasts long enough to be cut.
        for host in ["instance1", "instance2"] {
            await ApplyLab.wipe(name, on: host)
            try await ApplyLab.installBundle("memhog", on: host, name: name,
                                             args: ["--mb", "240", "--mode", "incompressible", "--fraction", "0.01", "--period", "1"])
        }
        try await ApplyLab.startRunc(name, on: "instance1")
        let boot = try await ApplyLab.report(name, on: "instance1")["boot"] as? String
        let schema = try await ApplyLab.freshSchema()
        defer { Task { await ApplyLab.dropSchema(schema) } }
        let plan = try ApplyLabSuites.ApplyIntegrationTests.memhogPlan(name, compression: "none")

        // The received file as the controller sees it (the host's /var/lib/migplan is a directory of the lab).
        let partial = ApplyLab.labDir + "/hosts/instance2/var-lib-migplan/incoming/\(name).tar.part"
        let killed = KillRecord()
        var options = ApplyOptions()
        options.environment = try ApplyLab.applyEnvironment()
        options.journalSchema = schema
        options.lockTimeout = .seconds(10)
        options.hooks = FaultHooks(beforeAct: ["\(name).transfer@controller": { _, _ in
            // Once the transfer has started writing on the destination, kill its sshd.
            Task.detached {
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline {
                    let size = (try? FileManager.default.attributesOfItem(atPath: partial)[.size] as? NSNumber)?.int64Value ?? 0
                    if size >= 4 << 20 {
                        killed.set(size: size, result: Result { try Self.killDestinationSSHD() })
                        return
                    }
                    try? await Task.sleep(for: .milliseconds(10))
                }
                killed.set(size: 0, result: .failure(ApplyLab.Failure(description: "the transfer never started writing \(partial)")))
            }
        }])
        let result = try await ApplySession.apply(planFile: plan, options: options)
        let record = try #require(killed.value, "sshd was never killed")
        let pids = try record.result.get()
        #expect(!pids.isEmpty)
        let total = Int64(240) << 20
        #expect(record.size < total, "killed after \(record.size) of about \(total) bytes: mid-transfer")

        #expect(result.outcome == .failed, "\(result.summary)")
        #expect(result.report?.rolledBack == ["\(name).rollback"])
        #expect(result.problems.contains { $0.hasPrefix("\(name).transfer@controller") }, "\(result.problems)")
        // The container runs with its state on the source only (checked without sshd on instance2).
        #expect(try await ApplyLab.isRunning(name, on: "instance1"))
        #expect(!(try await ApplyLab.isRunning(name, on: "instance2")))
        let after = try await ApplyLab.report(name, on: "instance1")
        #expect(after["boot"] as? String == boot, "the same process runs on the source")
        #expect(after["intact"] as? Bool == true)
        // The journal says so: rolled back, the destination unreachable (what stays there named),
        // restored and verified on the source, its memory dump removed there.
        let detail = try await ApplyLab.runDetail(result.runID, schema: schema)
        #expect(detail.run.outcome == "rolled-back")
        let transfer = try #require(detail.steps.first { $0.stepKey == "\(name).transfer@controller" })
        #expect(transfer.status == "failed")
        let cleanup = try #require(detail.steps.first { $0.stepKey == "\(name).cleanupDestination@instance2" })
        #expect(cleanup.status == "changed")
        #expect(cleanup.detail?.contains("destinationUnreachable") == true, "\(cleanup.detail ?? "")")
        #expect(detail.steps.contains { $0.stepKey == "\(name).restoreOnSource@instance1" && $0.status == "changed" })
        let verified = try #require(detail.steps.first { $0.stepKey == "\(name).verifyRunning@instance1" })
        #expect(verified.status == "changed")
        #expect(verified.detail?.contains("imagesRemoved") == true)
        #expect(try await ApplyLab.leftovers(of: name, on: "instance1") == "")
    }
}

}  // extension ApplyLabSuites

/// What the killer task did (set once, from another task).
final class KillRecord: @unchecked Sendable {
    struct Value {
        var size: Int64
        var result: Result<[pid_t], any Error>
    }
    private let lock = NSLock()
    private var stored: Value?
    func set(size: Int64, result: Result<[pid_t], any Error>) { lock.withLock { stored = Value(size: size, result: result) } }
    var value: Value? { lock.withLock { stored } }
}
