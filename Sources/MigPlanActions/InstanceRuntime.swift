import Foundation
import MigPlanBasics
import MigPlanGraph
import MigPlanModel
import MigPlanRuntime

/// Where a container instance's runc bundle lives on a host: the plan's `bundle` for a single
/// container; for replicas, a sibling directory named after the instance
/// (`/var/lib/migplan/bundles/face` → `/var/lib/migplan/bundles/face-3`), since every replica
/// needs its own cgroup path and state directory.
public func instanceBundle(container: Container, instance: String, host: MigPlanModel.Host) -> String {
    let bundle = container.bundle ?? host.runtime.defaultBundle(for: container.name)
    guard container.replicas > 1 else { return bundle }
    let trimmed = bundle.hasSuffix("/") ? String(bundle.dropLast()) : bundle
    guard let slash = trimmed.lastIndex(of: "/") else { return instance }
    return String(trimmed[..<slash]) + "/" + instance
}

/// The workload's state directory on a host (bind-mounted at /state in the container).
public func stateDirectory(instance: String, host: MigPlanModel.Host) -> String {
    "\(host.runtime.workDir)/state/\(instance)"
}

/// What the sample workloads answer to a `report` request (the fields migplan checks).
public struct WorkloadReport: Sendable, Hashable {
    public var boot: String?
    public var counter: Int?
    public var intact: Bool?
    /// face: the digest of its trained model (must survive the move).
    public var modelDigest: String?
    public var raw: String

    static func parse(_ text: String) -> WorkloadReport? {
        guard let data = text.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return WorkloadReport(boot: object["boot"] as? String, counter: (object["counter"] as? NSNumber)?.intValue,
                              intact: (object["intact"] as? NSNumber)?.boolValue, modelDigest: object["modelDigest"] as? String,
                              raw: text)
    }
}

/// One container instance on one host, through the runtime module's command builders.
struct InstanceRuntime {
    let host: MigPlanModel.Host
    let runtimeHost: RuntimeHost
    let instance: ContainerInstance
    let container: Container

    var name: String { instance.name }
    var isDocker: Bool { container.runtime == .docker }
    var runc: RuncCommands { RuncCommands(root: host.runtime.runcRoot ?? "/run/runc") }
    var docker: DockerCommands { DockerCommands(daemonHost: host.runtime.dockerHost) }
    var bundle: String { instanceBundle(container: container, instance: name, host: host) }
    var stateDir: String { stateDirectory(instance: name, host: host) }

    var dockerSpec: DockerContainerSpec {
        DockerContainerSpec(
            name: name, image: container.image ?? "",
            command: container.command ?? [],
            mounts: [.init(source: "/usr", target: "/usr", readOnly: true), .init(source: stateDir, target: "/state")],
            environment: ["MIGPLAN_HOST": host.name, "MIGPLAN_CONTAINER": name])
    }

    var dockerDriver: DockerDriver { DockerDriver(host: runtimeHost, commands: docker, specs: [dockerSpec]) }

    func state() async throws -> ContainerState {
        if isDocker { return try await dockerDriver.state(name) }
        let out = try await runtimeHost.runner.run(runc.state(name: name), timeout: .seconds(60))
        return try ContainerStateParser.parseRuncState(out, host: host.name, container: name)
    }

    func isRunning() async throws -> Bool { try await state().isRunning }

    private func ensureStateDir() async throws {
        let d = stateDir.shellQuoted
        try await runtimeHost.run("mkdir -p \(d)/requests \(d)/responses", operation: "mkdir state", container: name)
    }

    /// Starts the container from its bundle / image (a stopped leftover of the same name is removed first).
    func start() async throws {
        try await ensureStateDir()
        if isDocker {
            try await dockerDriver.start(name)
            return
        }
        let current = try await state()
        if current.status != .absent { try await remove() }
        try await runtimeHost.run(runc.run(name: name, bundle: bundle), operation: "runc run", container: name)
    }

    func stop() async throws {
        if isDocker { try await dockerDriver.stop(name, timeoutSeconds: 10) } else {
            try await runtimeHost.run(runc.stop(name: name, timeoutSeconds: 10), operation: "runc stop", container: name)
        }
    }

    /// SIGKILL, then wait until it no longer runs.
    func kill() async throws {
        let current = try await state()
        guard current.isRunning else { return }
        if isDocker {
            try await runtimeHost.run(docker.kill(name: name, signal: "KILL"), operation: "docker kill", container: name)
        } else {
            try await runtimeHost.run(runc.kill(name: name, signal: "KILL"), operation: "runc kill", container: name)
        }
        try await waitNotRunning()
    }

    func waitNotRunning() async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while try await state().isRunning {
            if ContinuousClock.now > deadline {
                throw ActionError(.containerState, host: host.name, "\(name) still runs 20 s after it was killed")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Removes the container (forcefully: callers decide whether a running one may go).
    func remove() async throws {
        if isDocker {
            try await dockerDriver.remove(name)
            return
        }
        let out = try await runtimeHost.runner.run(runc.delete(name: name, force: true), timeout: .seconds(60))
        if !out.succeeded && !out.stderrText.contains("does not exist") && !out.stderrText.contains("not found") {
            throw ActionError(.commandFailed, host: host.name, "runc delete \(name): \(out.stderrTail(maxBytes: 500))")
        }
    }

    func checkpoint(into directory: String, work: String) async throws {
        if isDocker {
            try await dockerDriver.checkpoint(name, into: directory, workDirectory: work)
        } else {
            try await RuncDriver(host: runtimeHost, commands: runc).checkpoint(name, into: directory, workDirectory: work)
        }
    }

    func restore(from directory: String, work: String) async throws {
        try await ensureStateDir()
        if isDocker {
            // Docker copies the images with `cp -a`: give it the real directory, not a symlink to tmpfs.
            let resolved = try await runtimeHost.run("readlink -f \(directory.shellQuoted)", operation: "readlink", container: name)
            let real = resolved.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            try await dockerDriver.restore(name, from: real.isEmpty ? directory : real, workDirectory: work)
            return
        }
        let current = try await state()
        if current.isRunning {
            throw ActionError(.containerState, host: host.name, "\(name) already runs here; not restoring a second copy")
        }
        if current.status != .absent { try await remove() }
        let out = try await runtimeHost.runner.run(
            runc.restore(name: name, bundle: bundle, imagePath: directory, workPath: work), timeout: .seconds(300))
        guard out.succeeded else {
            let log = try? await runtimeHost.runner.run(CriuLog.readTailCommand(path: RuncCommands.restoreLog(workPath: work)),
                                                        timeout: .seconds(30))
            let tail = log.map { CriuLog.tail(of: $0.stdoutText) } ?? ""
            throw ActionError(.runtime, host: host.name,
                              "runc restore \(name) failed (exit \(out.exitStatus)): \(out.stderrTail(maxBytes: 600))"
                              + (tail.isEmpty ? "" : "\nCRIU restore.log:\n\(tail)"))
        }
    }

    /// Asks the workload for its report through its state directory; nil when the container has
    /// no state directory (not one of migplan's spool workloads).
    func report(timeoutSeconds: Int = 30) async throws -> WorkloadReport? {
        let d = stateDir.shellQuoted
        let tries = timeoutSeconds * 10
        let script = """
            d=\(d); [ -d "$d/requests" ] || exit 4
            id=migplan-$$-$RANDOM
            printf '{"op":"report"}' > "$d/requests/.$id.tmp" && mv "$d/requests/.$id.tmp" "$d/requests/$id.json" || exit 1
            i=0; while [ ! -f "$d/responses/$id.json" ] && [ $i -lt \(tries) ]; do sleep 0.1; i=$((i+1)); done
            if [ -f "$d/responses/$id.json" ]; then cat "$d/responses/$id.json"; rm -f "$d/responses/$id.json"; else rm -f "$d/requests/$id.json"; exit 3; fi
            """
        let out = try await runtimeHost.runner.run(script, timeout: .seconds(Int64(timeoutSeconds + 30)))
        switch out.exitStatus {
        case 0:
            guard let r = WorkloadReport.parse(out.stdoutText) else {
                throw ActionError(.stateLost, host: host.name, "\(name): unreadable workload report: \(out.stdoutText.prefix(300))")
            }
            return r
        case 4: return nil
        case 3: throw ActionError(.stateLost, host: host.name, "\(name): the workload did not answer a report request within \(timeoutSeconds) s")
        default: throw ActionError(.commandFailed, host: host.name, "\(name): report request failed: \(out.stderrTail(maxBytes: 500))")
        }
    }
}
