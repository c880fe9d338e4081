import MigPlanBasics
import Testing
@testable import MigPlanRuntime

@Suite struct RuncCommandLineTests {
    let runc = RuncCommands(runcPath: "runc", root: "/run/runc")

    @Test func stateProbeIsExact() {
        #expect(runc.state(name: "memhog") == "runc --root /run/runc state memhog")
    }

    @Test func runStartsDetachedWithStdioOnDevNullAndLogsToBundle() {
        #expect(runc.run(name: "memhog", bundle: "/var/lib/migplan/bundles/memhog") ==
            "cd /var/lib/migplan/bundles/memhog && { rm -f /var/lib/migplan/bundles/memhog/runc-run.log; "
            + "runc --root /run/runc --log /var/lib/migplan/bundles/memhog/runc-run.log run -d --bundle /var/lib/migplan/bundles/memhog memhog "
            + "</dev/null >/dev/null 2>&1; rc=$?; if [ $rc -ne 0 ]; then tail -c 8192 /var/lib/migplan/bundles/memhog/runc-run.log >&2; fi; exit $rc; }")
    }

    @Test func createThenStartAreExact() {
        #expect(runc.create(name: "c", bundle: "/b/c") == "cd /b/c && { rm -f /b/c/runc-create.log; runc --root /run/runc --log /b/c/runc-create.log "
            + "create --bundle /b/c c </dev/null >/dev/null 2>&1; rc=$?; if [ $rc -ne 0 ]; then tail -c 8192 /b/c/runc-create.log >&2; fi; exit $rc; }")
        #expect(runc.start(name: "c") == "runc --root /run/runc start c")
    }

    @Test func checkpointPassesImageAndWorkPathsAndOptions() {
        let plain = runc.checkpoint(name: "face", imagePath: "/dev/shm/cp/face", workPath: "/var/lib/migplan/work/face")
        #expect(plain == "mkdir -p /dev/shm/cp/face /var/lib/migplan/work/face && runc --root /run/runc checkpoint "
            + "--image-path /dev/shm/cp/face --work-path /var/lib/migplan/work/face face")
        let all = runc.checkpoint(name: "face", imagePath: "/i", workPath: "/w",
                                  options: .init(leaveRunning: true, tcpEstablished: true, fileLocks: true, externalUnixSockets: true,
                                                 pageServer: "127.0.0.1:27000", parentPath: "../pre", preDump: true))
        #expect(all == "mkdir -p /i /w && runc --root /run/runc checkpoint --image-path /i --work-path /w --leave-running "
            + "--tcp-established --file-locks --ext-unix-sk --page-server 127.0.0.1:27000 --parent-path ../pre --pre-dump face")
    }

    @Test func restoreIsDetachedFromTheBundleWithTheSameOptions() {
        let cmd = runc.restore(name: "face", bundle: "/b/face", imagePath: "/i", workPath: "/w", options: .init(tcpEstablished: true))
        #expect(cmd == "mkdir -p /w && cd /b/face && { rm -f /b/face/runc-restore.log; runc --root /run/runc --log /b/face/runc-restore.log "
            + "restore -d --bundle /b/face --image-path /i --work-path /w --tcp-established face </dev/null >/dev/null 2>&1; rc=$?; "
            + "if [ $rc -ne 0 ]; then tail -c 8192 /b/face/runc-restore.log >&2; fi; exit $rc; }")
    }

    @Test func killDeleteAndStopAreExact() {
        #expect(runc.kill(name: "clock", signal: "USR1") == "runc --root /run/runc kill clock USR1")
        #expect(runc.delete(name: "clock") == "runc --root /run/runc delete clock")
        #expect(runc.delete(name: "clock", force: true) == "runc --root /run/runc delete --force clock")
        let stop = runc.stop(name: "clock", timeoutSeconds: 3)
        #expect(stop.hasPrefix("runc --root /run/runc kill clock TERM 2>/dev/null; i=0; while runc --root /run/runc state clock"))
        #expect(stop.contains("[ $i -lt 30 ]"))
        #expect(stop.contains("then runc --root /run/runc kill clock KILL;"))
    }

    @Test func everyPlanValueIsQuotedIncludingHostileNames() {
        let hostile = "x; rm -rf / #"
        let r = RuncCommands(runcPath: "/opt/my runc/runc", root: "/run/runc $(id)")
        #expect(r.state(name: hostile) == "'/opt/my runc/runc' --root '/run/runc $(id)' state 'x; rm -rf / #'")
        #expect(r.kill(name: "it's", signal: "KILL") == "'/opt/my runc/runc' --root '/run/runc $(id)' kill 'it'\\''s' KILL")
        let cp = r.checkpoint(name: "`reboot`", imagePath: "/tmp/a b", workPath: "/tmp/$HOME")
        #expect(cp == "mkdir -p '/tmp/a b' '/tmp/$HOME' && '/opt/my runc/runc' --root '/run/runc $(id)' checkpoint "
            + "--image-path '/tmp/a b' --work-path '/tmp/$HOME' '`reboot`'")
        let run = r.run(name: hostile, bundle: "/b/x;y")
        #expect(run.hasPrefix("cd '/b/x;y' && { rm -f '/b/x;y/runc-run.log'; "))
        #expect(run.contains("run -d --bundle '/b/x;y' 'x; rm -rf / #' </dev/null"))
    }

    @Test func criuLogPathsAreInTheWorkDirectory() {
        #expect(RuncCommands.dumpLog(workPath: "/w") == "/w/dump.log")
        #expect(RuncCommands.restoreLog(workPath: "/w/") == "/w/restore.log")
    }
}

@Suite struct DockerCommandLineTests {
    let docker = DockerCommands()
    let spec = DockerContainerSpec(
        name: "memhog", image: "migplan/memhog:latest", command: ["/usr/bin/python3", "/app/memhog/memhog.py", "--mb", "64"],
        mounts: [.init(source: "/usr", target: "/usr", readOnly: true), .init(source: "/var/lib/migplan/state/memhog", target: "/state")],
        environment: ["MIGPLAN_HOST": "instance1", "A": "1"])

    @Test func runIsDetachedWithoutNetworkAndWithUnconfinedSeccomp() {
        #expect(docker.run(spec) == "docker run -d --name memhog --network none --security-opt seccomp=unconfined "
            + "-v /usr:/usr:ro -v /var/lib/migplan/state/memhog:/state -e A=1 -e MIGPLAN_HOST=instance1 "
            + "migplan/memhog:latest /usr/bin/python3 /app/memhog/memhog.py --mb 64")
    }

    @Test func createUsesTheSameWords() {
        #expect(docker.create(spec) == docker.run(spec).replacingOccurrences(of: "docker run -d ", with: "docker create "))
    }

    @Test func probesAndLifecycleAreExact() {
        #expect(docker.inspect(name: "face") == "docker inspect --type container face")
        #expect(docker.start(name: "face") == "docker start face")
        #expect(docker.stop(name: "face", timeoutSeconds: 5) == "docker stop -t 5 face")
        #expect(docker.kill(name: "face", signal: "USR1") == "docker kill -s USR1 face")
        #expect(docker.remove(name: "face", force: true) == "docker rm -f face")
        #expect(DockerCommands(dockerPath: "/usr/bin/docker", daemonHost: "unix:///run/d 1.sock").inspect(name: "f")
            == "/usr/bin/docker -H 'unix:///run/d 1.sock' inspect --type container f")
    }

    @Test func checkpointCreateWritesIntoTheParentDirectory() {
        #expect(docker.checkpointCreate(name: "face", checkpoint: "cp1", parentDirectory: "/var/lib/migplan/checkpoints/face")
            == "mkdir -p /var/lib/migplan/checkpoints/face && docker checkpoint create --checkpoint-dir /var/lib/migplan/checkpoints/face face cp1")
        #expect(docker.checkpointCreate(name: "face", checkpoint: "cp1", parentDirectory: "/p", leaveRunning: true)
            == "mkdir -p /p && docker checkpoint create --checkpoint-dir /p --leave-running face cp1")
        #expect(DockerCommands.imagesDirectory(parentDirectory: "/p", checkpoint: "cp1") == "/p/cp1")
    }

    @Test func restoreCreatesCopiesIntoTheDataRootAndStartsFromTheCheckpoint() {
        let cmd = DockerCommands(dataRoot: "/var/lib/docker").restore(spec, checkpoint: "cp1", imagesDirectory: "/in/cp1")
        #expect(cmd.hasPrefix(docker.create(spec) + " >/dev/null && { id=$(docker inspect --type container --format '{{.Id}}' memhog) || exit 1; "))
        #expect(cmd.contains("case $id in ''|*[!0-9a-f]*) echo"))
        #expect(cmd.contains("d=/var/lib/docker/containers/$id/checkpoints; mkdir -p \"$d\" && rm -rf \"$d\"/cp1 && cp -a /in/cp1 \"$d\"/cp1; }"))
        #expect(cmd.hasSuffix(" && docker start --checkpoint cp1 memhog"))
    }

    @Test func hostileValuesStayOneWord() {
        let evil = DockerContainerSpec(name: "a;b", image: "img $(x)", command: ["sh", "-c", "echo 'hi'"],
                                       mounts: [.init(source: "/s p", target: "/t")], environment: ["K": "v w"], network: nil, securityOptions: [])
        #expect(docker.run(evil) == "docker run -d --name 'a;b' -v '/s p:/t' -e 'K=v w' 'img $(x)' sh -c 'echo '\\''hi'\\'''")
        #expect(docker.installCheckpoint(name: "n'1", checkpoint: "c p", imagesDirectory: "/d;x").contains("rm -rf \"$d\"/'c p' && cp -a '/d;x' \"$d\"/'c p'"))
    }
}

@Suite struct CriuAndProbeCommandLineTests {
    @Test func criuChecksFoldStderrIntoStdout() {
        let c = CriuCommands()
        #expect(c.check() == "criu check 2>&1")
        #expect(c.checkFeature(.memDirtyTrack) == "criu check --feature mem_dirty_track 2>&1")
        #expect(c.checkFeature(.uffdNoncoop) == "criu check --feature uffd-noncoop 2>&1")
        #expect(CriuCommands(criuPath: "/opt/c riu").version() == "'/opt/c riu' --version")
    }

    @Test func freeSpaceUsesPortableBytes() {
        #expect(HostProbes.freeSpace(path: "/var/lib/migplan") == "df -PB1 /var/lib/migplan")
        #expect(HostProbes.freeSpace(path: "/x y") == "df -PB1 '/x y'")
    }
}
