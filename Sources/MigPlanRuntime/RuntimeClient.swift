import MigPlanBasics

/// Runs runtime commands on one host through a `CommandRunner` and turns failures into
/// `RuntimeError`s (with CRIU's log tail for checkpoint/restore).
public struct RuntimeHost: Sendable {
    public let runner: any CommandRunner
    public var timeout: Duration?

    public init(runner: any CommandRunner, timeout: Duration? = .seconds(300)) {
        self.runner = runner
        self.timeout = timeout
    }

    public var hostName: String { runner.hostName }

    /// Run a command; a non-zero exit becomes `RuntimeError.commandFailed`.
    @discardableResult
    public func run(_ command: String, operation: String, container: String? = nil) async throws -> CommandOutput {
        let out = try await runner.run(command, timeout: timeout)
        guard out.succeeded else {
            throw RuntimeError(code: .commandFailed, host: hostName, container: container, operation: operation,
                               message: firstLine(out.stderrText).isEmpty ? "failed" : firstLine(out.stderrText),
                               exitStatus: out.exitStatus, stderrTail: out.stderrTail(maxBytes: 4096))
        }
        return out
    }

    /// A failure of a CRIU-backed operation: the runtime's error plus CRIU's log (read from the
    /// path the runtime's message names, or else from the given path). `.criuFailed` when a CRIU
    /// log was found, `.commandFailed` otherwise.
    func criuFailure(_ out: CommandOutput, operation: String, container: String, logPath: String?) async -> RuntimeError {
        var tail: String?
        if let path = CriuLog.logPath(inErrorText: out.stderrText) ?? logPath,
           let log = try? await runner.run(CriuLog.readTailCommand(path: path), timeout: .seconds(30)), !log.stdout.isEmpty {
            tail = "(\(path))\n" + CriuLog.tail(of: log.stdoutText)
        }
        // Without a CRIU log the runtime failed before CRIU ran (missing files, bad arguments).
        return RuntimeError(code: tail == nil ? .commandFailed : .criuFailed, host: hostName, container: container, operation: operation,
                            message: firstLine(out.stderrText).isEmpty ? "failed" : firstLine(out.stderrText),
                            exitStatus: out.exitStatus, stderrTail: out.stderrTail(maxBytes: 4096), criuLogTail: tail)
    }

    // MARK: probes

    /// `criu check` passed on this host; throws `.unsupported` with CRIU's words otherwise.
    public func requireCriu(_ criu: CriuCommands = .init()) async throws {
        let out = try await runner.run(criu.check(), timeout: .seconds(60))
        guard CriuCommands.checkPassed(out) else {
            throw RuntimeError(code: .unsupported, host: hostName, operation: "criu check",
                               message: "criu check failed: \(firstLine(out.stdoutText + out.stderrText))",
                               exitStatus: out.exitStatus, stderrTail: String((out.stdoutText + out.stderrText).suffix(2048)))
        }
    }

    /// Whether CRIU says the kernel supports a feature (soft-dirty for pre-copy, uffd for post-copy).
    public func criuFeature(_ feature: CriuCommands.Feature, criu: CriuCommands = .init()) async throws -> Bool {
        CriuCommands.featureSupported(try await runner.run(criu.checkFeature(feature), timeout: .seconds(60)))
    }

    /// Free space of the file system holding `path`.
    public func freeSpace(path: String) async throws -> HostProbes.DiskSpace {
        try HostProbes.parseFreeSpace(try await runner.run(HostProbes.freeSpace(path: path), timeout: .seconds(30)), host: hostName)
    }
}

/// What the engine asks of a container runtime on one host, whatever the runtime.
public protocol ContainerRuntimeDriver: Sendable {
    var host: RuntimeHost { get }
    func state(_ name: String) async throws -> ContainerState
    func start(_ name: String) async throws
    func stop(_ name: String, timeoutSeconds: Int) async throws
    func remove(_ name: String) async throws
    /// Checkpoint into `directory` (stopping the container unless `options.leaveRunning`).
    func checkpoint(_ name: String, into directory: String, workDirectory: String, options: CheckpointOptions) async throws
    /// Restore from `directory` (as made by `checkpoint` and copied here).
    func restore(_ name: String, from directory: String, workDirectory: String, options: RestoreOptions) async throws
    /// Send a signal to the container's init process.
    func signal(_ name: String, _ signal: String) async throws
}

extension ContainerRuntimeDriver {
    /// Poll the state until `accept` holds or `timeout` passes (then `.timeout`).
    @discardableResult
    public func waitForState(_ name: String, timeout: Duration = .seconds(10), interval: Duration = .milliseconds(100),
                             _ accept: @Sendable (ContainerState) -> Bool) async throws -> ContainerState {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var last = try await state(name)
        while !accept(last) {
            if clock.now >= deadline {
                throw RuntimeError(code: .timeout, host: host.hostName, container: name, operation: "wait",
                                   message: "still \(last.status.rawValue) after \(timeout)")
            }
            try await Task.sleep(for: interval)
            last = try await state(name)
        }
        return last
    }
}

/// runc on one host: containers are bundles at `bundleRoot/NAME` (same path on every host).
public struct RuncDriver: ContainerRuntimeDriver {
    public let host: RuntimeHost
    public var commands: RuncCommands
    /// Where bundles live on the host (`/var/lib/migplan/bundles`).
    public var bundleRoot: String

    public init(host: RuntimeHost, commands: RuncCommands = .init(), bundleRoot: String = "/var/lib/migplan/bundles") {
        self.host = host
        self.commands = commands
        self.bundleRoot = bundleRoot
    }

    public func bundle(_ name: String) -> String { join(bundleRoot, name) }

    public func state(_ name: String) async throws -> ContainerState {
        let out = try await host.runner.run(commands.state(name: name), timeout: host.timeout)
        return try ContainerStateParser.parseRuncState(out, host: host.hostName, container: name)
    }

    public func start(_ name: String) async throws {
        try await host.run(commands.run(name: name, bundle: bundle(name)), operation: "runc run", container: name)
    }

    public func stop(_ name: String, timeoutSeconds: Int = 10) async throws {
        try await host.run(commands.stop(name: name, timeoutSeconds: timeoutSeconds), operation: "runc stop", container: name)
    }

    public func remove(_ name: String) async throws {
        let out = try await host.runner.run(commands.delete(name: name, force: true), timeout: host.timeout)
        if !out.succeeded && !out.stderrText.contains("does not exist") {
            throw RuntimeError(code: .commandFailed, host: host.hostName, container: name, operation: "runc delete",
                               message: firstLine(out.stderrText), exitStatus: out.exitStatus, stderrTail: out.stderrTail())
        }
    }

    public func signal(_ name: String, _ signal: String) async throws {
        try await host.run(commands.kill(name: name, signal: signal), operation: "runc kill", container: name)
    }

    public func checkpoint(_ name: String, into directory: String, workDirectory: String, options: CheckpointOptions = .init()) async throws {
        let out = try await host.runner.run(commands.checkpoint(name: name, imagePath: directory, workPath: workDirectory, options: options),
                                            timeout: host.timeout)
        guard out.succeeded else {
            let log = options.preDump ? RuncCommands.preDumpLog(workPath: workDirectory) : RuncCommands.dumpLog(workPath: workDirectory)
            throw await host.criuFailure(out, operation: "runc checkpoint", container: name, logPath: log)
        }
    }

    public func restore(_ name: String, from directory: String, workDirectory: String, options: RestoreOptions = .init()) async throws {
        let out = try await host.runner.run(commands.restore(name: name, bundle: bundle(name), imagePath: directory,
                                                             workPath: workDirectory, options: options), timeout: host.timeout)
        guard out.succeeded else {
            throw await host.criuFailure(out, operation: "runc restore", container: name,
                                         logPath: RuncCommands.restoreLog(workPath: workDirectory))
        }
    }
}

/// Docker on one host. A checkpoint directory holds the CRIU images directly (the driver hides
/// Docker's `--checkpoint-dir PARENT` + checkpoint-name layout).
public struct DockerDriver: ContainerRuntimeDriver {
    public let host: RuntimeHost
    public var commands: DockerCommands
    /// How to create each container (restores recreate it from the same spec on the destination).
    public var specs: [String: DockerContainerSpec]
    /// The checkpoint name used inside Docker.
    public var checkpointName: String

    public init(host: RuntimeHost, commands: DockerCommands = .init(), specs: [DockerContainerSpec] = [], checkpointName: String = "migplan") {
        self.host = host
        self.commands = commands
        self.specs = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { _, b in b })
        self.checkpointName = checkpointName
    }

    func spec(_ name: String) throws -> DockerContainerSpec {
        guard let s = specs[name] else {
            throw RuntimeError(code: .invalidArgument, host: host.hostName, container: name, operation: "docker",
                               message: "no container spec for \(name) (image, command, mounts)")
        }
        return s
    }

    public func state(_ name: String) async throws -> ContainerState {
        let out = try await host.runner.run(commands.inspect(name: name), timeout: host.timeout)
        return try ContainerStateParser.parseDockerInspect(out, host: host.hostName, container: name)
    }

    /// Start: `docker start` if the container exists, else `docker run -d` from its spec.
    public func start(_ name: String) async throws {
        if try await state(name).status == .absent {
            try await host.run(commands.run(try spec(name)), operation: "docker run", container: name)
        } else {
            try await host.run(commands.start(name: name), operation: "docker start", container: name)
        }
    }

    public func stop(_ name: String, timeoutSeconds: Int = 10) async throws {
        let out = try await host.runner.run(commands.stop(name: name, timeoutSeconds: timeoutSeconds), timeout: host.timeout)
        if !out.succeeded && !out.stderrText.contains("No such container") {
            throw RuntimeError(code: .commandFailed, host: host.hostName, container: name, operation: "docker stop",
                               message: firstLine(out.stderrText), exitStatus: out.exitStatus, stderrTail: out.stderrTail())
        }
    }

    public func remove(_ name: String) async throws {
        let out = try await host.runner.run(commands.remove(name: name, force: true), timeout: host.timeout)
        if !out.succeeded && !out.stderrText.contains("No such container") {
            throw RuntimeError(code: .commandFailed, host: host.hostName, container: name, operation: "docker rm",
                               message: firstLine(out.stderrText), exitStatus: out.exitStatus, stderrTail: out.stderrTail())
        }
    }

    public func signal(_ name: String, _ signal: String) async throws {
        try await host.run(commands.kill(name: name, signal: signal), operation: "docker kill", container: name)
    }

    /// The CRIU images end up directly in `directory` (Docker writes them to PARENT/NAME; the
    /// driver uses `workDirectory` as PARENT and moves the result).
    public func checkpoint(_ name: String, into directory: String, workDirectory: String, options: CheckpointOptions = .init()) async throws {
        let made = DockerCommands.imagesDirectory(parentDirectory: workDirectory, checkpoint: checkpointName)
        let cmd = "rm -rf \(ShellQuote.quote(made)) && "
            + commands.checkpointCreate(name: name, checkpoint: checkpointName, parentDirectory: workDirectory, leaveRunning: options.leaveRunning)
            + " && rm -rf \(ShellQuote.quote(directory)) && mkdir -p \(ShellQuote.quote(directory)) && rmdir \(ShellQuote.quote(directory))"
            + " && mv \(ShellQuote.quote(made)) \(ShellQuote.quote(directory))"
        let out = try await host.runner.run(cmd, timeout: host.timeout)
        guard out.succeeded else {
            throw await host.criuFailure(out, operation: "docker checkpoint create", container: name,
                                         logPath: join(made, "dump.log"))
        }
    }

    /// Recreate the container from its spec, install the images, `docker start --checkpoint`.
    /// A container of that name left over (created, not running) is replaced.
    public func restore(_ name: String, from directory: String, workDirectory: String, options: RestoreOptions = .init()) async throws {
        let s = try spec(name)
        let existing = try await state(name)
        if existing.status == .running {
            throw RuntimeError(code: .invalidArgument, host: host.hostName, container: name, operation: "docker restore",
                               message: "a container of that name is already running here")
        }
        if existing.status != .absent { try await remove(name) }
        let out = try await host.runner.run(commands.restore(s, checkpoint: checkpointName, imagesDirectory: directory), timeout: host.timeout)
        guard out.succeeded else {
            throw await host.criuFailure(out, operation: "docker start --checkpoint", container: name,
                                         logPath: join(directory, "restore.log"))
        }
    }
}
