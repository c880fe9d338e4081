import Foundation
import MigPlanBasics
import Testing
@testable import MigPlanRuntime

/// A runner that answers from a script (first matching prefix wins) and records every command.
final class ScriptedRunner: CommandRunner, @unchecked Sendable {
    let hostName = "fake1"
    private let lock = NSLock()
    private var script: [(prefix: String, output: CommandOutput)]
    private(set) var commands: [String] = []

    init(_ script: [(String, CommandOutput)]) { self.script = script.map { (prefix: $0.0, output: $0.1) } }

    func run(_ command: String, timeout: Duration?) async throws -> CommandOutput {
        lock.withLock {
            commands.append(command)
            return script.first { command.hasPrefix($0.prefix) }?.output ?? CommandOutput(exitStatus: 0)
        }
    }

    var recorded: [String] { lock.withLock { commands } }
}

private func out(_ status: Int32, _ stdout: String = "", _ stderr: String = "") -> CommandOutput {
    CommandOutput(exitStatus: status, stdout: Array(stdout.utf8), stderr: Array(stderr.utf8))
}

@Suite struct DriverTests {
    @Test func failedCheckpointReadsTheCriuLogNamedByRunc() async throws {
        let runner = ScriptedRunner([
            ("mkdir -p /i /w && runc", out(1, "", "time=\"x\" level=error msg=\"criu failed: type NOTIFY errno 0\\nlog file: /w/dump.log\"\n")),
            ("tail -c 65536 /w/dump.log", out(0, "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE\n(00.02) Error (criu/cr-dump.c:2093): Dumping FAILED.\n")),
        ])
        let runc = RuncDriver(host: RuntimeHost(runner: runner))
        do {
            try await runc.checkpoint("memhog", into: "/i", workDirectory: "/w", options: .init())
            Issue.record("must throw")
        } catch let e as RuntimeError {
            #expect(e.code == .criuFailed)
            #expect(e.host == "fake1" && e.container == "memhog" && e.operation == "runc checkpoint")
            #expect(e.criuLogTail == "(/w/dump.log)\n(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE\n(00.02) Error (criu/cr-dump.c:2093): Dumping FAILED.")
        }
        #expect(runner.recorded.last == "tail -c 65536 /w/dump.log 2>/dev/null || true")
    }

    @Test func failureBeforeCriuRanIsACommandFailure() async throws {
        let runner = ScriptedRunner([
            ("mkdir -p /w && cd /b/face", out(1, "", "open /i/descriptors.json: no such file or directory\n")),
            ("tail -c", out(0, "")),
        ])
        let runc = RuncDriver(host: RuntimeHost(runner: runner), bundleRoot: "/b")
        await #expect { try await runc.restore("face", from: "/i", workDirectory: "/w", options: .init()) } throws: { e in
            let e = e as! RuntimeError
            return e.code == .commandFailed && e.criuLogTail == nil && e.message.contains("descriptors.json")
        }
        #expect(runner.recorded.last == "tail -c 65536 /w/restore.log 2>/dev/null || true")
    }

    @Test func removingAnAbsentRuncContainerSucceeds() async throws {
        let runner = ScriptedRunner([("runc --root /run/runc delete --force x", out(1, "", "container does not exist"))])
        try await RuncDriver(host: RuntimeHost(runner: runner)).remove("x")
    }

    @Test func dockerStartRunsFromTheSpecWhenTheContainerIsAbsent() async throws {
        let spec = DockerContainerSpec(name: "clock", image: "migplan/clock:latest")
        let runner = ScriptedRunner([("docker inspect", out(1, "[]", "Error: No such container: clock"))])
        try await DockerDriver(host: RuntimeHost(runner: runner), specs: [spec]).start("clock")
        #expect(runner.recorded == ["docker inspect --type container clock",
                                    "docker run -d --name clock --network none --security-opt seccomp=unconfined migplan/clock:latest"])
    }

    @Test func dockerRestoreReplacesALeftoverContainerAndRefusesARunningOne() async throws {
        let spec = DockerContainerSpec(name: "face", image: "migplan/face:latest")
        let exited = #"[{"Id":"abc","State":{"Status":"exited","Pid":0}}]"#
        let runner = ScriptedRunner([("docker inspect", out(0, exited))])
        try await DockerDriver(host: RuntimeHost(runner: runner), specs: [spec]).restore("face", from: "/i", workDirectory: "/w", options: .init())
        let cmds = runner.recorded
        #expect(cmds.count == 3)
        #expect(cmds[1] == "docker rm -f face")
        #expect(cmds[2].hasPrefix("docker create --name face") && cmds[2].hasSuffix("docker start --checkpoint migplan face"))

        let running = ScriptedRunner([("docker inspect", out(0, #"[{"Id":"abc","State":{"Status":"running","Pid":7}}]"#))])
        await #expect { try await DockerDriver(host: RuntimeHost(runner: running), specs: [spec]).restore("face", from: "/i", workDirectory: "/w", options: .init()) } throws: { e in
            (e as? RuntimeError)?.code == .invalidArgument
        }
    }

    @Test func dockerCheckpointLandsDirectlyInTheImagesDirectory() async throws {
        let runner = ScriptedRunner([])
        try await DockerDriver(host: RuntimeHost(runner: runner)).checkpoint("face", into: "/c/images", workDirectory: "/w", options: .init())
        #expect(runner.recorded == ["rm -rf /w/migplan && mkdir -p /w && docker checkpoint create --checkpoint-dir /w face migplan && rm -rf /c/images "
            + "&& mkdir -p /c/images && rmdir /c/images && mv /w/migplan /c/images"])
    }

    @Test func dockerWithoutSpecSaysWhatIsMissing() async throws {
        let runner = ScriptedRunner([("docker inspect", out(1, "[]", "Error: No such container: x"))])
        await #expect { try await DockerDriver(host: RuntimeHost(runner: runner)).start("x") } throws: { e in
            (e as? RuntimeError)?.code == .invalidArgument && "\(e)".contains("no container spec for x")
        }
    }

    @Test func waitForStateTimesOutWithTheLastStatus() async throws {
        let runner = ScriptedRunner([("runc", out(0, #"{"id":"x","pid":0,"status":"stopped"}"#))])
        await #expect {
            try await RuncDriver(host: RuntimeHost(runner: runner)).waitForState("x", timeout: .milliseconds(250), interval: .milliseconds(50)) { $0.isRunning }
        } throws: { e in
            (e as? RuntimeError)?.code == .timeout && "\(e)".contains("still stopped")
        }
    }

    @Test func criuProbesThroughTheHost() async throws {
        let runner = ScriptedRunner([
            ("criu check --feature mem_dirty_track", out(1, "Dirty tracking is OFF. Memory snapshot will not work.\n")),
            ("criu check --feature uffd", out(0, "UFFD is supported\n")),
            ("criu check", out(0, "Looks good.\n")),
            ("df -PB1", out(0, "Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/x 100 40 60 40% /\n")),
        ])
        let h = RuntimeHost(runner: runner)
        try await h.requireCriu()
        #expect(try await h.criuFeature(.memDirtyTrack) == false)
        #expect(try await h.criuFeature(.uffd) == true)
        #expect(try await h.freeSpace(path: "/var/lib/migplan").availableBytes == 60)
        let bad = ScriptedRunner([("criu check", out(1, "Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds\n"))])
        await #expect { try await RuntimeHost(runner: bad).requireCriu() } throws: { e in
            (e as? RuntimeError)?.code == .unsupported && "\(e)".contains("vDSO")
        }
    }
}
