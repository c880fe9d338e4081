import MigPlanBasics
import Testing
@testable import MigPlanRuntime

private func out(_ status: Int32, _ stdout: String, _ stderr: String = "") -> CommandOutput {
    CommandOutput(exitStatus: status, stdout: Array(stdout.utf8), stderr: Array(stderr.utf8))
}

@Suite struct RuncStateParserTests {
    // As printed by runc 1.1.5 on the lab.
    static let running = """
    {
      "ociVersion": "1.0.2-dev",
      "id": "mh-local",
      "pid": 16765,
      "status": "running",
      "bundle": "/var/lib/migplan/bundles/mh-local",
      "rootfs": "/var/lib/migplan/bundles/mh-local/rootfs",
      "created": "2026-11-25T20:38:23.113660561Z",
      "owner": ""
    }
    """

    @Test func runningStateHasPidAndCreationTime() throws {
        let s = try ContainerStateParser.parseRuncState(out(0, Self.running))
        #expect(s == ContainerState(status: .running, pid: 16765, startedAt: "2026-11-25T20:38:23.113660561Z",
                                    id: "mh-local", bundle: "/var/lib/migplan/bundles/mh-local"))
        #expect(s.isRunning)
    }

    @Test func stoppedStateHasNoPid() throws {
        let s = try ContainerStateParser.parseRuncState(out(0, Self.running.replacingOccurrences(of: "\"running\"", with: "\"stopped\"")
            .replacingOccurrences(of: "16765", with: "0")))
        #expect(s.status == .stopped)
        #expect(s.pid == nil)
    }

    @Test func createdAndPausedAreRecognised() throws {
        for (word, status) in [("created", ContainerState.Status.created), ("paused", .paused), ("pausing", .paused)] {
            let s = try ContainerStateParser.parseRuncState(out(0, Self.running.replacingOccurrences(of: "\"running\"", with: "\"\(word)\"")))
            #expect(s.status == status)
        }
    }

    @Test func missingContainerIsAbsentNotAnError() throws {
        let s = try ContainerStateParser.parseRuncState(out(1, "", "time=\"2026-11-25T20:38:28Z\" level=error msg=\"container does not exist\"\n"))
        #expect(s == .absent)
    }

    @Test func otherFailuresAreTypedCommandErrors() {
        #expect {
            try ContainerStateParser.parseRuncState(out(127, "", "sh: 1: runc: not found\n"), host: "instance2", container: "face")
        } throws: { e in
            let e = e as! RuntimeError
            return e.code == .commandFailed && e.host == "instance2" && e.container == "face" && e.exitStatus == 127
                && e.description.contains("runc: not found")
        }
    }

    @Test(arguments: ["", "not json", "{\"id\":\"x\"}", "[1,2]", "{\"status\":\"exploded\",\"pid\":1}", "{\"status\":\"running\",\"pid\":\"12\"}"])
    func malformedOutputIsATypedError(_ text: String) {
        #expect {
            try ContainerStateParser.parseRuncState(out(0, text), host: "instance1", container: "c")
        } throws: { e in
            (e as? RuntimeError)?.code == .malformedOutput && (e as! RuntimeError).operation == "runc state"
        }
    }
}

@Suite struct DockerInspectParserTests {
    static func inspect(status: String, pid: Int, started: String = "2026-11-25T20:40:01.123456789Z") -> String {
        """
        [
            {
                "Id": "0f3c1d2e4b5a69788796a5b4c3d2e1f00f3c1d2e4b5a69788796a5b4c3d2e1f0",
                "Created": "2026-11-25T20:40:00.9Z",
                "Path": "/usr/bin/python3",
                "Args": ["/app/memhog/memhog.py", "--mb", "64"],
                "State": {
                    "Status": "\(status)",
                    "Running": \(status == "running"),
                    "Paused": false,
                    "Restarting": false,
                    "OOMKilled": false,
                    "Dead": false,
                    "Pid": \(pid),
                    "ExitCode": 0,
                    "Error": "",
                    "StartedAt": "\(started)",
                    "FinishedAt": "0001-01-01T00:00:00Z"
                },
                "Image": "sha256:aa",
                "Name": "/memhog",
                "Config": { "Image": "migplan/memhog:latest", "Cmd": ["/usr/bin/python3"] }
            }
        ]
        """
    }

    @Test func runningContainerHasPidStartTimeIdAndImage() throws {
        let s = try ContainerStateParser.parseDockerInspect(out(0, Self.inspect(status: "running", pid: 4242)))
        #expect(s.status == .running)
        #expect(s.pid == 4242)
        #expect(s.startedAt == "2026-11-25T20:40:01.123456789Z")
        #expect(s.id == "0f3c1d2e4b5a69788796a5b4c3d2e1f00f3c1d2e4b5a69788796a5b4c3d2e1f0")
        #expect(s.image == "migplan/memhog:latest")
    }

    @Test func exitedIsStoppedAndCreatedHasNoStartTime() throws {
        #expect(try ContainerStateParser.parseDockerInspect(out(0, Self.inspect(status: "exited", pid: 0))).status == .stopped)
        let created = try ContainerStateParser.parseDockerInspect(out(0, Self.inspect(status: "created", pid: 0, started: "0001-01-01T00:00:00Z")))
        #expect(created.status == .created)
        #expect(created.startedAt == nil)
        #expect(created.pid == nil)
    }

    @Test func noSuchContainerIsAbsent() throws {
        #expect(try ContainerStateParser.parseDockerInspect(out(1, "[]\n", "Error: No such container: memhog\n")) == .absent)
        #expect(try ContainerStateParser.parseDockerInspect(out(1, "[]\n", "Error response from daemon: No such object: memhog\n")) == .absent)
        #expect(try ContainerStateParser.parseDockerInspect(out(0, "[]")) == .absent)
    }

    @Test func daemonDownIsACommandError() {
        #expect {
            try ContainerStateParser.parseDockerInspect(out(1, "", "Cannot connect to the Docker daemon at unix:///run/docker.sock. Is the docker daemon running?\n"))
        } throws: { e in
            (e as? RuntimeError)?.code == .commandFailed && "\(e)".contains("Cannot connect to the Docker daemon")
        }
    }

    @Test(arguments: ["", "{}", "[{\"Id\": 1}]", "[{\"Id\":\"x\",\"State\":{\"Status\":\"melted\"}}]", "\u{0}\u{1}binary", "[{\"Id\":\"a\",\"State\":{\"Status\":\"running\"}},{\"Id\":\"b\",\"State\":{\"Status\":\"running\"}}]"])
    func malformedInspectIsATypedError(_ text: String) {
        #expect {
            try ContainerStateParser.parseDockerInspect(out(0, text))
        } throws: { e in
            (e as? RuntimeError)?.code == .malformedOutput
        }
    }
}

@Suite struct CriuOutputTests {
    static let dumpLog = """
    (00.000000) Version: 4.1.1 (gitid 0)
    (00.000012) Running on instance1 Linux 6.18.44 #1 SMP x86_64
    (00.000310) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
    (00.001000) Dumping pid 1
    (00.004000) Error (criu/mount.c:1088): mnt: Mount 42 ./usr (master_id: 0 shared_id: 0) has unreachable sharing
    (00.004100) Error (criu/cr-dump.c:2093): Dumping FAILED.
    (00.004200) Unfreezing tasks into 1
    (00.004300) 	Unseizing 16765 into 1
    """

    @Test func errorsSkipTheHarmlessRlimitLine() {
        #expect(CriuLog.errors(in: Self.dumpLog) == [
            "(00.004000) Error (criu/mount.c:1088): mnt: Mount 42 ./usr (master_id: 0 shared_id: 0) has unreachable sharing",
            "(00.004100) Error (criu/cr-dump.c:2093): Dumping FAILED.",
        ])
    }

    @Test func tailPutsEarlierErrorsBeforeTheLastLines() {
        let t = CriuLog.tail(of: Self.dumpLog, lines: 2)
        #expect(t.split(separator: "\n").map(String.init) == [
            "(00.004000) Error (criu/mount.c:1088): mnt: Mount 42 ./usr (master_id: 0 shared_id: 0) has unreachable sharing",
            "(00.004100) Error (criu/cr-dump.c:2093): Dumping FAILED.",
            "...",
            "(00.004200) Unfreezing tasks into 1",
            "(00.004300) \tUnseizing 16765 into 1",
        ])
    }

    @Test func tailOfAShortLogIsTheLog() {
        #expect(CriuLog.tail(of: "a\nb\n", lines: 10) == "a\nb")
        #expect(CriuLog.tail(of: "") == "")
    }

    @Test func logPathIsFoundInRuntimeErrors() {
        let runc = "time=\"2026-11-25T20:50:00Z\" level=error msg=\"criu failed: type NOTIFY errno 0\\nlog file: /var/lib/migplan/work/face/dump.log\""
        #expect(CriuLog.logPath(inErrorText: runc) == "/var/lib/migplan/work/face/dump.log")
        let docker = "Error response from daemon: Cannot checkpoint container face: runc did not terminate successfully: exit status 1: criu failed: type NOTIFY errno 0 path= /run/containerd/io.containerd.runtime.v2.task/moby/abc/criu-dump.log: unknown"
        #expect(CriuLog.logPath(inErrorText: docker) == "/run/containerd/io.containerd.runtime.v2.task/moby/abc/criu-dump.log")
        #expect(CriuLog.logPath(inErrorText: "nothing here") == nil)
        #expect(CriuLog.readTailCommand(path: "/w x/dump.log", bytes: 100) == "tail -c 100 '/w x/dump.log' 2>/dev/null || true")
    }

    @Test func checkVerdictNeedsLooksGoodAndSuccess() {
        #expect(CriuCommands.checkPassed(out(0, "Warn  (criu/kerndat.c:1): something\nLooks good.\n")))
        #expect(!CriuCommands.checkPassed(out(1, "Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds\nLooks good.\n")))
        #expect(!CriuCommands.checkPassed(out(0, "")))
    }

    @Test func featureVerdicts() {
        #expect(!CriuCommands.featureSupported(out(0, "Dirty tracking is OFF. Memory snapshot will not work.\n")))
        #expect(CriuCommands.featureSupported(out(0, "Dirty tracking is ON\n")))
        #expect(CriuCommands.featureSupported(out(0, "UFFD is supported\n")))
        #expect(!CriuCommands.featureSupported(out(1, "UFFD is not supported\n")))
        #expect(!CriuCommands.featureSupported(out(1, "")))
    }

    @Test func versionIsParsed() {
        #expect(CriuCommands.parseVersion(out(0, "Version: 4.1.1\n")) == "4.1.1")
        #expect(CriuCommands.parseVersion(out(0, "criu: command not found\n")) == nil)
    }
}

@Suite struct DiskSpaceParserTests {
    @Test func dfLineIsParsedInBytes() throws {
        let d = try HostProbes.parseFreeSpace(out(0, """
        Filesystem          1-blocks        Used   Available Capacity Mounted on
        /dev/vda1       105089261568 30551732224 70226112512      31% /var/lib/migplan dir
        """))
        #expect(d == .init(filesystem: "/dev/vda1", totalBytes: 105_089_261_568, usedBytes: 30_551_732_224,
                           availableBytes: 70_226_112_512, mountPoint: "/var/lib/migplan dir"))
    }

    @Test func dfFailureAndGarbageAreTypedErrors() {
        #expect { try HostProbes.parseFreeSpace(out(1, "", "df: /nope: No such file or directory\n"), host: "instance1") } throws: { e in
            (e as? RuntimeError)?.code == .commandFailed && "\(e)".hasPrefix("instance1: df")
        }
        #expect { try HostProbes.parseFreeSpace(out(0, "Filesystem 1-blocks\n/dev/x abc def ghi 1% /\n")) } throws: { e in
            (e as? RuntimeError)?.code == .malformedOutput
        }
        #expect { try HostProbes.parseFreeSpace(out(0, "")) } throws: { e in (e as? RuntimeError)?.code == .malformedOutput }
    }
}

@Suite struct RuntimeErrorTests {
    @Test func descriptionNamesHostOperationContainerStatusAndCriuLog() {
        let e = RuntimeError(code: .criuFailed, host: "instance2", container: "face", operation: "runc restore",
                             message: "criu failed: type RESTORE errno 0", exitStatus: 1,
                             stderrTail: "criu failed: type RESTORE errno 0\nlog file: /w/restore.log\n",
                             criuLogTail: "(/w/restore.log)\n(00.1) Error (criu/mount.c:1): boom")
        #expect(e.description == """
        instance2: runc restore face: criu failed: type RESTORE errno 0 (exit status 1)
        stderr: criu failed: type RESTORE errno 0
        log file: /w/restore.log
        CRIU log:
        (/w/restore.log)
        (00.1) Error (criu/mount.c:1): boom
        """)
    }
}
