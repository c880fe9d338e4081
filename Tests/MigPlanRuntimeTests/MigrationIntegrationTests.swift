import Foundation
import MigPlanBasics
import MigPlanRuntime
import MigPlanSSH
import Testing

/// Issue 4's acceptance on the lab: real sshd, CRIU 4, runc, dockerd. A stateful workload is
/// checkpointed on instance1, its images are streamed to instance2 through the controller over
/// SSH (aes256-ctr, hmac-sha2-256, diffie-hellman-group-exchange-sha256) and restored there.
@Suite(.serialized, .enabled(if: !Lab.skipped, "MIGPLAN_SKIP_LAB=1: the lab is declared absent"))
struct MigrationIntegrationTests {
    static let base = "/var/lib/migplan"

    static func images(_ name: String) -> String { "\(base)/checkpoints/\(name)/images" }
    static func work(_ name: String) -> String { "\(base)/work/\(name)" }

    static func dockerSpec(_ workload: String, name: String, args: [String]) -> DockerContainerSpec {
        DockerContainerSpec(
            name: name, image: "migplan/\(workload):latest",
            command: ["/usr/bin/python3", "/app/\(workload)/\(workload).py"] + args,
            mounts: [.init(source: "/usr", target: "/usr", readOnly: true), .init(source: Workload.stateDir(name), target: "/state")],
            environment: ["MIGPLAN_CONTAINER": name])
    }

    /// checkpoint on `from` → relay the images through the controller → restore on `to`.
    static func move(_ name: String, from: any ContainerRuntimeDriver, src: SSHConnection,
                     to: any ContainerRuntimeDriver, dst: SSHConnection) async throws -> MoveFigures {
        var f = MoveFigures()
        let clock = ContinuousClock()
        let img = ShellQuote.quote(images(name))
        _ = try await dst.run("rm -rf \(img) \(ShellQuote.quote(work(name)))", timeout: .seconds(30))
        f.checkpoint = try await clock.measure {
            try await from.checkpoint(name, into: images(name), workDirectory: work(name), options: .init())
        }
        let relay = try await SSHRelay.pipe(from: src, command: "tar -C \(img) -c .",
                                            to: dst, command: "mkdir -p \(img) && tar -C \(img) -x && cat > /dev/null", timeout: .seconds(300))
        f.transfer = relay.duration
        f.bytes = relay.bytes
        f.restore = try await clock.measure {
            try await to.restore(name, from: images(name), workDirectory: work(name), options: .init())
        }
        return f
    }

    static func cleanUp(_ name: String, _ drivers: [any ContainerRuntimeDriver]) async {
        for d in drivers {
            try? await d.stop(name, timeoutSeconds: 2)
            try? await d.remove(name)
            _ = try? await d.host.runner.run("rm -rf \(ShellQuote.quote(images(name))) \(ShellQuote.quote(work(name)))", timeout: .seconds(30))
        }
    }

    // MARK: memhog

    func memhogMoves(runtime: String) async throws {
        let name = "it-\(runtime)-memhog"
        let args = ["--mb", "64", "--mode", "half", "--fraction", "0.02", "--period", "0.5", "--seed", "7"]
        let src = try await Lab.connect("instance1"), dst = try await Lab.connect("instance2")
        defer { src.close(); dst.close() }
        let (from, to) = try await drivers(runtime: runtime, workload: "memhog", name: name, args: args, src: src, dst: dst)
        await Self.cleanUp(name, [from, to])
        try await Workload.resetState(src, name)
        try await Workload.resetState(dst, name)

        try await from.start(name)
        let started = try await from.waitForState(name) { $0.isRunning }
        #expect(started.pid != nil)
        let before = try await Workload.ask(src, name, id: "before")
        #expect(before.intact == true, "memhog's memory must match its seed before the move")
        #expect(before.sizeBytes == 64 << 20)

        let figures = try await Self.move(name, from: from, src: src, to: to, dst: dst)
        print("\(runtime) memhog 64 MiB half-compressible: \(figures)")

        #expect(try await from.state(name).isRunning == false, "the source must not run the container after the checkpoint")
        let moved = try await to.waitForState(name) { $0.isRunning }
        #expect(moved.pid != nil)
        let after = try await Workload.ask(dst, name, id: "after")
        #expect(after.boot == before.boot, "the same process continued (same boot token), not a restart")
        #expect(after.pid == 1)
        #expect((after.counter ?? -1) >= (before.counter ?? Int.max), "the counter continued from where it was")
        #expect(after.intact == true, "restored memory digest \(after.digest ?? "-") must equal the digest recomputed from the seed for counter \(after.counter ?? -1)")
        #expect(after.served == before.served + 1)
        // A second answer a little later: still the same process, still ticking, memory intact.
        try await Task.sleep(for: .seconds(1.2))
        let later = try await Workload.ask(dst, name, id: "later")
        #expect(later.boot == before.boot && (later.counter ?? 0) > (after.counter ?? 0) && later.intact == true)

        await Self.cleanUp(name, [from, to])
    }

    @Test func runcMemhogMovesWithTheSameMemoryDigestAndItsCounterContinued() async throws {
        try await memhogMoves(runtime: "runc")
    }

    @Test func dockerMemhogMovesWithTheSameMemoryDigestAndItsCounterContinued() async throws {
        try await memhogMoves(runtime: "docker")
    }

    // MARK: face

    func faceMoves(runtime: String) async throws {
        let name = "it-\(runtime)-face"
        let args = ["--samples", "600", "--identities", "8", "--seed", "3"]
        let src = try await Lab.connect("instance1"), dst = try await Lab.connect("instance2")
        defer { src.close(); dst.close() }
        let (from, to) = try await drivers(runtime: runtime, workload: "face", name: name, args: args, src: src, dst: dst)
        await Self.cleanUp(name, [from, to])
        try await Workload.resetState(src, name)
        try await Workload.resetState(dst, name)

        try await from.start(name)
        try await from.waitForState(name) { $0.isRunning }
        let first = try await Workload.ask(src, name, id: "r1", request: #"{"op":"recognize","image":"astronaut","variant":1}"#, waitSeconds: 120)
        #expect(first.label == "astronaut" && first.detected == true, "the Haar cascade finds and LBPH recognizes the astronaut")
        let lfw = try await Workload.ask(src, name, id: "r2", request: #"{"op":"recognize","image":"lfw-3","variant":2}"#)
        #expect(lfw.label == "lfw-3")
        let before = try await Workload.ask(src, name, id: "before")
        #expect(before.samples == 600 && before.recognized == 2)

        let figures = try await Self.move(name, from: from, src: src, to: to, dst: dst)
        print("\(runtime) face (600 samples): \(figures)")

        try await to.waitForState(name) { $0.isRunning }
        let after = try await Workload.ask(dst, name, id: "r3", request: #"{"op":"recognize","image":"astronaut","variant":5}"#)
        #expect(after.boot == before.boot, "the same process continued")
        #expect(after.label == "astronaut" && after.detected == true, "the moved model still recognizes the astronaut")
        #expect(after.recognized == 3, "the recognition counter continued (2 before the move, this is the 3rd)")
        #expect(after.served == before.served + 1)
        let report = try await Workload.ask(dst, name, id: "after")
        #expect(report.modelDigest == before.modelDigest, "the model in memory is the one trained before the move")
        #expect(report.samples == 600)

        await Self.cleanUp(name, [from, to])
    }

    @Test func runcFaceMovesAndStillRecognizesTheAstronautWithItsCounterContinued() async throws {
        try await faceMoves(runtime: "runc")
    }

    @Test func dockerFaceMovesAndStillRecognizesTheAstronautWithItsCounterContinued() async throws {
        try await faceMoves(runtime: "docker")
    }

    // MARK: clock (stateless)

    func clockStartsAndStops(runtime: String) async throws {
        let name = "it-\(runtime)-clock"
        let args = ["--period", "0.2"]
        let src = try await Lab.connect("instance1"), dst = try await Lab.connect("instance2")
        defer { src.close(); dst.close() }
        let (one, two) = try await drivers(runtime: runtime, workload: "clock", name: name, args: args, src: src, dst: dst)
        await Self.cleanUp(name, [one, two])
        for (driver, conn, host) in [(one, src, "instance1"), (two, dst, "instance2")] {
            try await Workload.resetState(conn, name)
            try await driver.start(name)
            try await driver.waitForState(name) { $0.isRunning }
            let a = try await Workload.ask(conn, name, id: "a")
            try await Task.sleep(for: .seconds(0.6))
            let b = try await Workload.ask(conn, name, id: "b")
            #expect(a.boot == b.boot && (b.ticks ?? 0) > (a.ticks ?? 0), "the clock ticks on \(host)")
            if runtime == "runc" { #expect(b.host == host) }
            let log = try await conn.run("cat \(Workload.stateDir(name))/clock.log", timeout: .seconds(10))
            #expect(log.stdoutText.split(separator: "\n").count >= 2)
            try await driver.stop(name, timeoutSeconds: 5)
            let stopped = try await driver.state(name)
            #expect(stopped.status == .stopped || stopped.status == .absent, "stopped on \(host), was \(stopped.status)")
            try await driver.remove(name)
            #expect(try await driver.state(name) == .absent)
        }
    }

    @Test func runcClockStartsAndStopsOnEitherHost() async throws {
        try await clockStartsAndStops(runtime: "runc")
    }

    @Test func dockerClockStartsAndStopsOnEitherHost() async throws {
        try await clockStartsAndStops(runtime: "docker")
    }

    // MARK: probes and failures

    @Test func criuCheckPassesOnEveryHostAndFeaturesAreProbed() async throws {
        for host in ["instance1", "instance2"] {
            let c = try await Lab.connect(host)
            defer { c.close() }
            let h = RuntimeHost(runner: c)
            try await h.requireCriu()
            let version = CriuCommands.parseVersion(try await c.run(CriuCommands().version(), timeout: .seconds(30)))
            #expect((version.flatMap { Int($0.prefix { $0 != "." }) } ?? 0) >= 4, "CRIU >= 4 on \(host), got \(version ?? "none")")
            // No assumption about the kernel: the probe must answer either way.
            let dirty = try await h.criuFeature(.memDirtyTrack)
            let uffd = try await h.criuFeature(.uffd)
            print("\(host): criu \(version ?? "?"), mem_dirty_track \(dirty), uffd \(uffd)")
            let df = try await h.freeSpace(path: Self.base)
            #expect(df.availableBytes > 0 && df.totalBytes >= df.availableBytes)
        }
    }

    @Test func absentContainersAreReportedAbsentByBothRuntimes() async throws {
        let c = try await Lab.connect("instance1")
        defer { c.close() }
        let h = RuntimeHost(runner: c)
        #expect(try await RuncDriver(host: h).state("it-never-created") == .absent)
        #expect(try await DockerDriver(host: h).state("it-never-created") == .absent)
    }

    @Test func failedRestoreCarriesTheTailOfCriusLog() async throws {
        let name = "it-runc-badrestore"
        let c = try await Lab.connect("instance2")
        defer { c.close() }
        try await Lab.installBundle("memhog", on: "instance2", name: name, args: ["--mb", "8"])
        let runc = RuncDriver(host: RuntimeHost(runner: c))
        await Self.cleanUp(name, [runc])
        // An image directory that holds no checkpoint: runc reads descriptors.json, CRIU then
        // fails on the garbage inventory and says so in restore.log.
        let img = Self.images(name)
        _ = try await c.run("mkdir -p \(img) && echo garbage > \(img)/inventory.img && "
            + "echo '[\"/dev/null\",\"/dev/null\",\"/dev/null\"]' > \(img)/descriptors.json", timeout: .seconds(10))
        do {
            try await runc.restore(name, from: Self.images(name), workDirectory: Self.work(name), options: .init())
            Issue.record("restoring from a garbage image directory must fail")
        } catch let e as RuntimeError {
            #expect(e.code == .criuFailed)
            #expect(e.host == "instance2" && e.container == name)
            let tail = try #require(e.criuLogTail)
            #expect(tail.contains("restore.log"), "the log tail names its file: \(tail)")
            #expect(tail.contains("Error"), "CRIU's error lines are in the tail: \(tail)")
            #expect(!tail.contains("RLIMIT_NOFILE") || tail.split(separator: "\n").count > 1)
        }
        await Self.cleanUp(name, [runc])
        #expect(try await runc.state(name) == .absent)
    }

    @Test func localNamespaceRunnerSeesTheSameHostAsSSH() async throws {
        let c = try await Lab.connect("instance1")
        defer { c.close() }
        let viaSSH = try await c.run("ls -d /var/lib/migplan/bundles/* | sort", timeout: .seconds(10))
        let local = try await LocalNamespaceRunner(hostName: "instance1").run("ls -d /var/lib/migplan/bundles/* | sort", timeout: .seconds(30))
        #expect(viaSSH.succeeded && local.succeeded)
        #expect(viaSSH.stdoutText == local.stdoutText)
    }

    // MARK: setup

    /// Installs the bundle (runc) or image (Docker) on both hosts and makes the two drivers.
    func drivers(runtime: String, workload: String, name: String, args: [String],
                 src: SSHConnection, dst: SSHConnection) async throws -> (any ContainerRuntimeDriver, any ContainerRuntimeDriver) {
        switch runtime {
        case "runc":
            for h in ["instance1", "instance2"] { try await Lab.installBundle(workload, on: h, name: name, args: args) }
            return (RuncDriver(host: RuntimeHost(runner: src)), RuncDriver(host: RuntimeHost(runner: dst)))
        default:
            for h in ["instance1", "instance2"] { try await Lab.installImage(workload, on: h) }
            let spec = Self.dockerSpec(workload, name: name, args: args)
            return (DockerDriver(host: RuntimeHost(runner: src), specs: [spec]), DockerDriver(host: RuntimeHost(runner: dst), specs: [spec]))
        }
    }
}
