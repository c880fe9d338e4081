import MigPlanBasics

/// Options of a CRIU checkpoint taken through a runtime.
public struct CheckpointOptions: Sendable, Equatable, Codable {
    /// Keep the container running after the dump (a copy, not a move).
    public var leaveRunning: Bool
    /// Dump established TCP connections (`--tcp-established`).
    public var tcpEstablished: Bool
    /// Dump file locks (`--file-locks`).
    public var fileLocks: Bool
    /// Allow external UNIX sockets (`--ext-unix-sk`, runc only).
    public var externalUnixSockets: Bool
    /// Send pages to a CRIU page server at `address:port` (runc only; tunnel it through SSH).
    public var pageServer: String?
    /// A previous pre-dump's image directory, relative to the image path (runc only).
    public var parentPath: String?
    /// Only pre-dump the memory (runc only; needs soft-dirty tracking: `mem_dirty_track`).
    public var preDump: Bool

    public init(leaveRunning: Bool = false, tcpEstablished: Bool = false, fileLocks: Bool = false,
                externalUnixSockets: Bool = false, pageServer: String? = nil, parentPath: String? = nil,
                preDump: Bool = false) {
        self.leaveRunning = leaveRunning
        self.tcpEstablished = tcpEstablished
        self.fileLocks = fileLocks
        self.externalUnixSockets = externalUnixSockets
        self.pageServer = pageServer
        self.parentPath = parentPath
        self.preDump = preDump
    }
}

/// Options of a restore through a runtime.
public struct RestoreOptions: Sendable, Equatable, Codable {
    public var tcpEstablished: Bool
    public var fileLocks: Bool
    public var externalUnixSockets: Bool
    /// CRIU's `--mntns-compat-mode` (runc: not exposed; kept for runtimes that pass CRIU options).
    public init(tcpEstablished: Bool = false, fileLocks: Bool = false, externalUnixSockets: Bool = false) {
        self.tcpEstablished = tcpEstablished
        self.fileLocks = fileLocks
        self.externalUnixSockets = externalUnixSockets
    }
}

/// Exact runc command lines. Every value is quoted; nothing here runs anything.
///
/// Each lab host has its own runc state directory (`--root`, default `/run/runc`, which the lab
/// makes per-host) and each bundle's `linux.cgroupsPath` names its host (`/migplan/HOST/NAME`),
/// so two hosts on one machine never collide.
public struct RuncCommands: Sendable, Equatable {
    public var runcPath: String
    /// runc's state directory (`runc --root`).
    public var root: String

    public init(runcPath: String = "runc", root: String = "/run/runc") {
        self.runcPath = runcPath
        self.root = root
    }

    private var runc: String { "\(ShellQuote.quote(runcPath)) --root \(ShellQuote.quote(root))" }

    /// runc's own log for a detached start/restore, kept next to the bundle: the container's
    /// stdio are /dev/null (CRIU cannot dump a process holding the SSH session's pipes), so runc's
    /// errors go to this file and are copied to stderr when runc fails.
    public static func logPath(bundle: String, operation: String) -> String {
        "\(bundle.hasSuffix("/") ? String(bundle.dropLast()) : bundle)/runc-\(operation).log"
    }

    /// Runs `body` (a runc invocation taking `--log LOG`) with stdio detached from the session and
    /// copies the log to stderr if it fails.
    private func detached(_ body: String, log: String) -> String {
        let l = ShellQuote.quote(log)
        return "rm -f \(l); \(body) </dev/null >/dev/null 2>&1; rc=$?; "
            + "if [ $rc -ne 0 ]; then tail -c 8192 \(l) >&2; fi; exit $rc"
    }

    /// Create and start a container from its bundle, detached, stdio on /dev/null.
    public func run(name: String, bundle: String) -> String {
        let log = Self.logPath(bundle: bundle, operation: "run")
        let b = ShellQuote.quote(bundle)
        return "cd \(b) && { " + detached("\(runcPathQ) --root \(rootQ) --log \(ShellQuote.quote(log)) run -d --bundle \(b) \(ShellQuote.quote(name))", log: log) + "; }"
    }

    /// Create without starting (`runc create`), detached like `run`; `start` runs it.
    public func create(name: String, bundle: String) -> String {
        let log = Self.logPath(bundle: bundle, operation: "create")
        let b = ShellQuote.quote(bundle)
        return "cd \(b) && { " + detached("\(runcPathQ) --root \(rootQ) --log \(ShellQuote.quote(log)) create --bundle \(b) \(ShellQuote.quote(name))", log: log) + "; }"
    }

    /// `runc start NAME` (a container made by `create`).
    public func start(name: String) -> String { "\(runc) start \(ShellQuote.quote(name))" }

    private var runcPathQ: String { ShellQuote.quote(runcPath) }
    private var rootQ: String { ShellQuote.quote(root) }

    /// `runc state NAME` (JSON on stdout; parse with `ContainerStateParser.parseRuncState`).
    public func state(name: String) -> String { "\(runc) state \(ShellQuote.quote(name))" }

    /// `runc kill NAME SIGNAL`.
    public func kill(name: String, signal: String = "TERM") -> String {
        "\(runc) kill \(ShellQuote.quote(name)) \(ShellQuote.quote(signal))"
    }

    /// Stop: SIGTERM, wait up to `timeoutSeconds` for the container to stop, then SIGKILL.
    /// Succeeds when the container is stopped or absent.
    public func stop(name: String, timeoutSeconds: Int = 10) -> String {
        let n = ShellQuote.quote(name)
        let st = "\(runc) state \(n) 2>/dev/null | grep -q '\"status\": \"running\"'"
        return "\(runc) kill \(n) TERM 2>/dev/null; i=0; while \(st) && [ $i -lt \(max(0, timeoutSeconds) * 10) ]; do sleep 0.1; i=$((i+1)); done; "
            + "if \(st); then \(runc) kill \(n) KILL; sleep 0.2; fi; true"
    }

    /// `runc delete [--force] NAME`.
    public func delete(name: String, force: Bool = false) -> String {
        "\(runc) delete \(force ? "--force " : "")\(ShellQuote.quote(name))"
    }

    /// Checkpoint into `imagePath` (CRIU images) with CRIU's work files and dump.log in `workPath`.
    /// The container stops unless `options.leaveRunning`.
    public func checkpoint(name: String, imagePath: String, workPath: String, options: CheckpointOptions = .init()) -> String {
        var w = ["checkpoint", "--image-path", imagePath, "--work-path", workPath]
        if options.leaveRunning { w.append("--leave-running") }
        if options.tcpEstablished { w.append("--tcp-established") }
        if options.fileLocks { w.append("--file-locks") }
        if options.externalUnixSockets { w.append("--ext-unix-sk") }
        if let ps = options.pageServer { w += ["--page-server", ps] }
        if let pp = options.parentPath { w += ["--parent-path", pp] }
        if options.preDump { w.append("--pre-dump") }
        w.append(name)
        return "mkdir -p \(ShellQuote.quote(imagePath)) \(ShellQuote.quote(workPath)) && \(runc) \(ShellQuote.join(w))"
    }

    /// Restore detached from `imagePath` with the bundle's config (its cgroupsPath names this host).
    public func restore(name: String, bundle: String, imagePath: String, workPath: String, options: RestoreOptions = .init()) -> String {
        let log = Self.logPath(bundle: bundle, operation: "restore")
        var w = ["restore", "-d", "--bundle", bundle, "--image-path", imagePath, "--work-path", workPath]
        if options.tcpEstablished { w.append("--tcp-established") }
        if options.fileLocks { w.append("--file-locks") }
        if options.externalUnixSockets { w.append("--ext-unix-sk") }
        w.append(name)
        return "mkdir -p \(ShellQuote.quote(workPath)) && cd \(ShellQuote.quote(bundle)) && { "
            + detached("\(runcPathQ) --root \(rootQ) --log \(ShellQuote.quote(log)) \(ShellQuote.join(w))", log: log) + "; }"
    }

    /// Where CRIU writes its log for a checkpoint / restore run through runc.
    public static func dumpLog(workPath: String) -> String { join(workPath, "dump.log") }
    public static func restoreLog(workPath: String) -> String { join(workPath, "restore.log") }
    public static func preDumpLog(workPath: String) -> String { join(workPath, "pre-dump.log") }
}

func join(_ dir: String, _ file: String) -> String {
    dir.hasSuffix("/") ? dir + file : dir + "/" + file
}
