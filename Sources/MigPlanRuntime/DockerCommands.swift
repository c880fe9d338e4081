import MigPlanBasics

/// What a Docker container is made of: image, command, mounts, environment.
public struct DockerContainerSpec: Sendable, Equatable, Codable {
    public struct Mount: Sendable, Equatable, Codable {
        public var source: String
        public var target: String
        public var readOnly: Bool
        public init(source: String, target: String, readOnly: Bool = false) {
            self.source = source
            self.target = target
            self.readOnly = readOnly
        }
    }

    public var name: String
    public var image: String
    /// The command; empty means the image's CMD.
    public var command: [String]
    public var mounts: [Mount]
    /// Environment variables, emitted sorted by name.
    public var environment: [String: String]
    /// `--network`: `none` by default (CRIU has nothing to lock; workloads need no network).
    public var network: String?
    /// `--security-opt` values; seccomp is unconfined by default, as verified with CRIU here.
    public var securityOptions: [String]

    public init(name: String, image: String, command: [String] = [], mounts: [Mount] = [],
                environment: [String: String] = [:], network: String? = "none",
                securityOptions: [String] = ["seccomp=unconfined"]) {
        self.name = name
        self.image = image
        self.command = command
        self.mounts = mounts
        self.environment = environment
        self.network = network
        self.securityOptions = securityOptions
    }
}

/// Exact docker command lines (Docker 20.10 with `experimental`, the lab's dockerd).
///
/// Restoring on another daemon: Docker 20.10 refuses `docker start --checkpoint-dir` ("custom
/// checkpointdir is not supported"), so the checkpoint is copied into
/// `DATA_ROOT/containers/<full id>/checkpoints/<CP>` of a freshly created container and started
/// with `docker start --checkpoint CP` (platform notes).
public struct DockerCommands: Sendable, Equatable {
    public var dockerPath: String
    /// dockerd's `--data-root` on that host (the lab binds a per-host directory over the default).
    public var dataRoot: String
    /// `-H` for a daemon that is not on the default socket.
    public var daemonHost: String?

    public init(dockerPath: String = "docker", dataRoot: String = "/var/lib/docker", daemonHost: String? = nil) {
        self.dockerPath = dockerPath
        self.dataRoot = dataRoot
        self.daemonHost = daemonHost
    }

    private var docker: String {
        var s = ShellQuote.quote(dockerPath)
        if let daemonHost { s += " -H " + ShellQuote.quote(daemonHost) }
        return s
    }

    private func createWords(_ spec: DockerContainerSpec) -> [String] {
        var w = ["--name", spec.name]
        if let network = spec.network { w += ["--network", network] }
        for opt in spec.securityOptions { w += ["--security-opt", opt] }
        for m in spec.mounts { w += ["-v", m.source + ":" + m.target + (m.readOnly ? ":ro" : "")] }
        for key in spec.environment.keys.sorted() { w += ["-e", key + "=" + spec.environment[key]!] }
        w.append(spec.image)
        w += spec.command
        return w
    }

    /// `docker run -d ...` (prints the container id).
    public func run(_ spec: DockerContainerSpec) -> String {
        "\(docker) run -d \(ShellQuote.join(createWords(spec)))"
    }

    /// `docker create ...` (prints the container id).
    public func create(_ spec: DockerContainerSpec) -> String {
        "\(docker) create \(ShellQuote.join(createWords(spec)))"
    }

    public func start(name: String) -> String { "\(docker) start \(ShellQuote.quote(name))" }

    /// `docker stop -t SECONDS NAME` (SIGTERM, then SIGKILL after the timeout).
    public func stop(name: String, timeoutSeconds: Int = 10) -> String {
        "\(docker) stop -t \(max(0, timeoutSeconds)) \(ShellQuote.quote(name))"
    }

    public func kill(name: String, signal: String = "KILL") -> String {
        "\(docker) kill -s \(ShellQuote.quote(signal)) \(ShellQuote.quote(name))"
    }

    /// `docker rm [-f] NAME`.
    public func remove(name: String, force: Bool = false) -> String {
        "\(docker) rm \(force ? "-f " : "")\(ShellQuote.quote(name))"
    }

    /// `docker inspect --type container NAME` (parse with `ContainerStateParser.parseDockerInspect`).
    public func inspect(name: String) -> String {
        "\(docker) inspect --type container \(ShellQuote.quote(name))"
    }

    /// Where `checkpointCreate` leaves the CRIU images: `parentDirectory/checkpoint`.
    public static func imagesDirectory(parentDirectory: String, checkpoint: String) -> String {
        join(parentDirectory, checkpoint)
    }

    /// `docker checkpoint create --checkpoint-dir DIR [--leave-running] NAME CP`: images in DIR/CP.
    public func checkpointCreate(name: String, checkpoint: String, parentDirectory: String, leaveRunning: Bool = false) -> String {
        var w = ["checkpoint", "create", "--checkpoint-dir", parentDirectory]
        if leaveRunning { w.append("--leave-running") }
        w += [name, checkpoint]
        return "mkdir -p \(ShellQuote.quote(parentDirectory)) && \(docker) \(ShellQuote.join(w))"
    }

    /// Copy CRIU images from `imagesDirectory` into the checkpoint store of the (created, not
    /// started) container `name`, as checkpoint `checkpoint`.
    public func installCheckpoint(name: String, checkpoint: String, imagesDirectory: String) -> String {
        let cp = ShellQuote.quote(checkpoint)
        return "id=$(\(docker) inspect --type container --format '{{.Id}}' \(ShellQuote.quote(name))) || exit 1; "
            + "case $id in ''|*[!0-9a-f]*) echo \"docker: unexpected container id '$id'\" >&2; exit 1;; esac; "
            + "d=\(ShellQuote.quote(dataRoot))/containers/$id/checkpoints; "
            + "mkdir -p \"$d\" && rm -rf \"$d\"/\(cp) && cp -a \(ShellQuote.quote(imagesDirectory)) \"$d\"/\(cp)"
    }

    /// `docker start --checkpoint CP NAME`.
    public func startFromCheckpoint(name: String, checkpoint: String) -> String {
        "\(docker) start --checkpoint \(ShellQuote.quote(checkpoint)) \(ShellQuote.quote(name))"
    }

    /// The whole restore on the destination as one command line: create the container from the
    /// same spec, install the checkpoint, start from it.
    public func restore(_ spec: DockerContainerSpec, checkpoint: String, imagesDirectory: String) -> String {
        "\(create(spec)) >/dev/null && { \(installCheckpoint(name: spec.name, checkpoint: checkpoint, imagesDirectory: imagesDirectory)); } && "
            + startFromCheckpoint(name: spec.name, checkpoint: checkpoint)
    }
}
