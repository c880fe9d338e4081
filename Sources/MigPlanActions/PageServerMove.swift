import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanModel
import MigPlanRuntime
import MigPlanSSH

/// What `pageServerPrepare` set up for one instance, used by its dump (same run, same process).
struct PreparedPageServer: Sendable {
    /// The source's loopback listener (remote forward on the source's session).
    var listener: SSHRemoteListener
    /// The page server's port on the destination's loopback.
    var port: Int
    /// Commands started before the freeze, each waiting on its stdin (`SSHParkedCommand`): the
    /// dump on the source, the receiving end of the rest of the images and the restore on the
    /// destination. Inside the freeze no command has to be started.
    var dump: SSHParkedCommand
    var receive: SSHParkedCommand
    var restore: SSHParkedCommand
    /// After the dump: the rest of the images (a tar the dump command wrote to its stdout).
    var rest: [UInt8] = []
    var restSHA256 = ""
    var restEntries = 0

    func abandonAll() async {
        await dump.abandon()
        await receive.abandon()
        await restore.abandon()
    }
}

/// Prepared page servers, by runner and instance.
final class PageServerRegistry: @unchecked Sendable {
    static let shared = PageServerRegistry()
    private let lock = NSLock()
    private var prepared: [String: PreparedPageServer] = [:]

    static func key(_ runner: LiveStepRunner, _ instance: String) -> String { "\(ObjectIdentifier(runner).hashValue)/\(instance)" }
    /// The same instance after its dump (what finish and restore still need).
    static func afterDump(_ runner: LiveStepRunner, _ instance: String) -> String { key(runner, instance) + "/dumped" }

    func set(_ key: String, _ value: PreparedPageServer?) -> PreparedPageServer? {
        lock.withLock {
            let old = prepared[key]
            prepared[key] = value
            return old
        }
    }

    func get(_ key: String) -> PreparedPageServer? { lock.withLock { prepared[key] } }

    /// Manifest digests of received pages whose finish step failed (its outputs are not
    /// recorded): the rollback's return still checks the pages against them.
    private var digests: [String: String] = [:]
    func setDigest(_ key: String, _ digest: String) { lock.withLock { digests[key] = digest } }
    func digest(_ key: String) -> String? { lock.withLock { digests[key] } }
}

/// `transfer.method: page-server` (docs/page-server.md): the steps' acts.
extension LiveStepRunner {
    func isPageServerMove(_ step: Step) -> Bool {
        plan.migration(named: step.migration)?.transfer.method == .pageServer
    }

    /// The images directory a page-server move writes on the destination for `instance`.
    func pageServerAction(_ step: Step, _ instance: ContainerInstance) throws -> PageServerAction {
        for s in graph.steps where s.migration == step.migration {
            if case .pageServerPrepare(let a) = s.action, a.instance.name == instance.name { return a }
        }
        throw ActionError(.preflight, step: step.id, "no page-server preparation for \(instance.name) in the graph")
    }

    /// The tmpfs directory a receive directory points to on the destination.
    func pageServerTmpfsDir(_ a: PageServerAction) -> String {
        let m = (a.receiveDir as NSString).deletingLastPathComponent.split(separator: "/").last.map(String.init) ?? "m"
        return "/dev/shm/migplan/\(a.to)/restore/\(m).\(a.instance.name)"
    }

    /// A shell command stopping the page server of `receiveDir`, by its pid file, only when that
    /// pid is still `criu page-server --images-dir RECEIVE_DIR` (`/proc/PID/cmdline`): a stale pid
    /// may by now be any process, even the restored container.
    static func stopPageServerCommand(_ receiveDir: String) -> String {
        let side = MigrationPageServerFiles(receiveDir)
        // Any argument whose base name is `criu` (the lab runs it through the dynamic loader),
        // then `page-server --images-dir RECEIVE_DIR`.
        return "p=$(cat \(side.pid.shellQuoted) 2>/dev/null || true); case \"$p\" in ''|*[!0-9]*) ;; *) "
            + "if tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | D=\(receiveDir.shellQuoted) awk '{a[NR]=$0} END {f=1; for (i=1; i+3<=NR; i++) "
            + "{n=a[i]; sub(/.*\\//, \"\", n); if (n==\"criu\" && a[i+1]==\"page-server\" && a[i+2]==\"--images-dir\" && a[i+3]==ENVIRON[\"D\"]) f=0}; exit f}'; "
            + "then kill \"$p\" 2>/dev/null || true; fi;; esac"
    }

    /// A shell prefix choosing the digest tool: OpenSSL's SHA-256 (several times faster here than
    /// coreutils') when present, else `sha256sum`; both record and check run on the same host.
    static let digestTool = "if command -v openssl >/dev/null 2>&1; then H='openssl dgst -sha256 -r'; else H=sha256sum; fi; "

    /// The digest manifest of every regular file in the current directory, in byte order.
    static let manifestCommand = "find . -maxdepth 1 -type f -printf '%f\\n' | LC_ALL=C sort | xargs -r $H"

    /// Every regular file's name, inode, size and status-change time (ns): a write, truncate,
    /// rename or chmod changes the ctime, which no system call can set back (docs/page-server.md).
    static let stampCommand = "find . -maxdepth 1 -type f -printf '%f %i %s %C@\\n' | LC_ALL=C sort"

    /// A prepare step an earlier run completed is never acted again: it would wipe the receive
    /// directory, which after a dump holds the only copy of the pages (the dump prepares again
    /// itself when the container still runs). Finish and return steps always act (they check).
    func pageServerProbe(_ context: StepContext) -> ProbeResult {
        if case .pageServerPrepare = context.step.action, context.previouslyCompleted { return .done }
        return .needed
    }

    // MARK: prepare (before the freeze)

    func pageServerPrepare(_ context: StepContext, _ a: PageServerAction) async throws -> [String: String] {
        try await pageServerPrepare(context.step, a)
    }

    func pageServerPrepare(_ step: Step, _ a: PageServerAction) async throws -> [String: String] {
        let key = PageServerRegistry.key(self, a.instance.name)
        if let old = PageServerRegistry.shared.set(key, nil) {
            await old.listener.cancel()
            await old.abandonAll()
        }
        if let old = PageServerRegistry.shared.set(PageServerRegistry.afterDump(self, a.instance.name), nil) { await old.abandonAll() }
        let src = try await ops(a.instance, on: a.from)
        guard !src.isDocker else {
            throw ActionError(.unsupported, host: a.from, step: step.id,
                              "\(a.instance.name) runs on Docker: its checkpoint cannot send pages to a page server; use transfer.method: archive")
        }
        let m = try migration(of: step)
        // Source: the container runs; room on tmpfs for its images? (The images are only the
        // non-page rest here, but CRIU writes pages locally if the page server is not reached.)
        let state = try await src.state()
        guard state.isRunning, let pid = state.pid, pid > 0 else {
            throw ActionError(.containerState, host: a.from, step: step.id,
                              "\(a.instance.name) is not running on \(a.from) (\(state.status.rawValue)); nothing to checkpoint")
        }
        let images = a.imagesDir.shellQuoted
        let srcTmpfs = tmpfsImagesDir(host: a.from, migration: m.name, instance: a.instance.name).shellQuoted
        let work = "\(src.host.runtime.workDir)/work/\(m.name)/\(a.instance.name)/checkpoint".shellQuoted
        let srcScript = "set -e; rss=$(ps -o rss= --pid \(pid) --ppid \(pid) | awk '{s+=$1} END {print s*1024}'); "
            + "echo \"rss $rss\"; " + Self.removeCommand(a.imagesDir) + "; mkdir -p \(work) \"$(dirname \(images))\"; "
            + "free=$(df -PB1 /dev/shm | awk 'NR==2 {print $4}'); "
            + "if [ \"$free\" -gt $((rss * 2 + 67108864)) ]; then \(Self.shmGuard(host: a.from))else shm=disk; fi; "
            + "if [ -z \"$shm\" ]; then rm -rf \(srcTmpfs); mkdir -p \(srcTmpfs); chmod 700 \(srcTmpfs); "
            + "ln -s \(srcTmpfs) \(images); echo 'images tmpfs'; else mkdir -p \(images); echo 'images disk'; fi"
        let srcOut = try await must(a.from, srcScript, "prepare the checkpoint directory")
        let rss = srcOut.stdoutText.split(separator: "\n").first { $0.hasPrefix("rss ") }.flatMap { Double($0.dropFirst(4)) } ?? 0
        // Destination: a fresh receive directory (tmpfs when it has room) and the page server on
        // its loopback, on a free port.
        let b = a.receiveDir.shellQuoted
        let side = MigrationPageServerFiles(a.receiveDir)
        let dstTmpfs = pageServerTmpfsDir(a).shellQuoted
        let criu = CriuCommands()
        let pageServer = criu.pageServer(imagesDir: a.receiveDir, address: "127.0.0.1", port: 11111,
                                         pidFile: side.pid, logFile: side.log)
            .replacingOccurrences(of: " --port 11111 ", with: " --port $p ")
        let dstScript = "set -e; \(Self.stopPageServerCommand(a.receiveDir)); "
            + "rm -f \(side.pid.shellQuoted) \(side.log.shellQuoted) \(side.manifest.shellQuoted); "
            + Self.removeCommand(a.receiveDir) + "; mkdir -p \"$(dirname \(b))\"; "
            + "free=$(df -PB1 /dev/shm | awk 'NR==2 {print $4}'); "
            + "if [ \"$free\" -gt \(Int64(rss * 2) + (64 << 20)) ]; then \(Self.shmGuard(host: a.to))else shm=disk; fi; "
            + "if [ -z \"$shm\" ]; then rm -rf \(dstTmpfs); mkdir -p \(dstTmpfs); chmod 700 \(dstTmpfs); "
            + "ln -s \(dstTmpfs) \(b); echo 'receive tmpfs'; else mkdir -p \(b); chmod 700 \(b); echo 'receive disk'; fi; "
            + "for i in 1 2 3 4 5 6 7 8; do p=$((20000 + RANDOM % 20000)); "
            + "if \(pageServer) 2>/dev/null; then echo \"port $p\"; exit 0; fi; done; "
            + "echo 'the page server did not start (8 ports tried)' >&2; cat \(side.log.shellQuoted) >&2 2>/dev/null; exit 1"
        let dstOut = try await must(a.to, dstScript, "start the page server")
        let lines = dstOut.stdoutText.split(separator: "\n").map(String.init)
        guard let portLine = lines.first(where: { $0.hasPrefix("port ") }), let port = Int(portLine.dropFirst(5)) else {
            throw ActionError(.commandFailed, host: a.to, step: step.id, "the page server did not say its port: \(dstOut.stdoutText.prefix(300))")
        }
        let listener: SSHRemoteListener
        do {
            listener = try await sessions.connection(a.from).listenRemote(address: "127.0.0.1", port: 0)
        } catch {
            _ = try? await sh(a.to, Self.stopPageServerCommand(a.receiveDir))
            throw ActionError.wrap(error, host: a.from)
        }
        // The forwarded port must be bound to the source's loopback only: with `GatewayPorts yes`
        // sshd binds every interface whatever address was asked (docs/page-server.md).
        let bound = try? await sh(a.from, "command -v ss >/dev/null 2>&1 || exit 0; ss -ltnH \"sport = :\(listener.port)\" | awk '{print $4}'")
        let exposed = (bound?.stdoutText ?? "").split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("127.") && !$0.hasPrefix("[::1]:") }
        if !exposed.isEmpty {
            await listener.cancel()
            _ = try? await sh(a.to, Self.stopPageServerCommand(a.receiveDir))
            throw ActionError(.preflight, host: a.from, step: step.id,
                              "sshd on \(a.from) bound the page-server tunnel to \(exposed.joined(separator: ", ")), not only to its loopback (GatewayPorts enabled?): refusing; set GatewayPorts no or use transfer.method: archive")
        }
        // The three commands of the freeze, started now and waiting on their stdin.
        let parked: (SSHParkedCommand, SSHParkedCommand, SSHParkedCommand)
        do {
            let m = try migration(of: step)
            let dump = try await SSHParkedCommand.start(
                dumpCommand(a, ops: src, migration: m.name, listenPort: listener.port), on: try await sessions.connection(a.from))
            let receive = try await SSHParkedCommand.start(
                "read -r go && [ \"$go\" = go ] || exit 99; " + receiveCommand(a), on: try await sessions.connection(a.to))
            let dstOps = try await ops(a.instance, on: a.to)
            let work = "\(dstOps.host.runtime.workDir)/work/\(m.name)/\(a.instance.name)/restore"
            let restore = try await SSHParkedCommand.start(
                "read -r digest || exit 99; case \"$digest\" in *[!0-9a-f]*|'') exit 99;; esac; "
                    + Self.runcRestoreScript(ops: dstOps, imagesDir: a.receiveDir, work: work, check: restoreCheck(a, digest: "\"$digest\"")),
                on: try await sessions.connection(a.to))
            parked = (dump, receive, restore)
        } catch {
            await listener.cancel()
            _ = try? await sh(a.to, Self.stopPageServerCommand(a.receiveDir))
            throw ActionError.wrap(error, host: nil)
        }
        _ = PageServerRegistry.shared.set(key, PreparedPageServer(listener: listener, port: port, dump: parked.0,
                                                                  receive: parked.1, restore: parked.2))
        var out = ["pageServerPort": String(port), "listenPort": String(listener.port),
                   "images": srcOut.stdoutText.contains("images tmpfs") ? "tmpfs" : "disk",
                   "receive": lines.contains("receive tmpfs") ? "tmpfs" : "disk"]
        if let refused = Self.tmpfsRefusal(srcOut.stdoutText) { out["tmpfsRefused"] = "\(a.from): \(refused)" }
        if let refused = Self.tmpfsRefusal(dstOut.stdoutText) { out["receiveTmpfsRefused"] = "\(a.to): \(refused)" }
        return out
    }

    // MARK: dump (the freeze starts here)

    /// `runc checkpoint --page-server` on the source, its pages spliced by the controller into the
    /// destination's page server. On failure CRIU resumes the container (runc's default).
    func pageServerDump(_ step: Step, _ a: CheckpointAction) async throws -> [String: String] {
        let actStarted = Date().timeIntervalSince1970
        let ps = try pageServerAction(step, a.instance)
        let key = PageServerRegistry.key(self, a.instance.name)
        if PageServerRegistry.shared.get(key) == nil {
            // A resumed run (the listener lived in the earlier controller process), or a retry:
            // prepare again. Safe: preparing refuses unless the container still runs on the
            // source, so no dump has left pages on the destination.
            _ = try await pageServerPrepare(step, ps)
        }
        guard let prepared = PageServerRegistry.shared.set(key, nil) else {
            throw ActionError(.preflight, host: ps.from, step: step.id, "the page server for \(a.instance.name) could not be prepared")
        }
        let destination: SSHConnection
        do {
            // The receiving end of the page stream, like a relay's, on its own lane.
            destination = try await sessions.receivingConnection(ps.to)
        } catch {
            await prepared.abandonAll()
            throw ActionError.wrap(error, host: ps.to)
        }
        let description = prepared.dump.command
        let startedAt = Date()
        let result: SpliceResult
        do {
            result = try await SSHForwarding.runSpliced(command: description, listener: prepared.listener, to: destination,
                                                        targetPort: prepared.port, timeout: commandTimeout, parked: prepared.dump)
        } catch {
            record(ps.from, "tunnel \(ps.from):127.0.0.1:\(prepared.listener.port) -> \(ps.to):127.0.0.1:\(prepared.port): \(description)",
                   startedAt, exit: nil, stdout: "", stderr: "", error: String(describing: error))
            Task { await prepared.listener.cancel() }
            await prepared.abandonAll()
            throw ActionError.wrap(error, host: ps.from)
        }
        record(ps.from, "tunnel \(ps.from):127.0.0.1:\(prepared.listener.port) -> \(ps.to):127.0.0.1:\(prepared.port): \(description)",
               startedAt, exit: result.command.exitStatus,
               stdout: "\(result.forwardBytes) bytes forwarded (sha256 \(result.forwardSHA256.hex)), \(result.backwardBytes) back; \(result.command.stdout.count) bytes of the rest of the images",
               stderr: String(result.command.stderrText.suffix(2048)), error: nil)
        // Not awaited: the listener goes on the source's thread after this step's reply.
        Task { await prepared.listener.cancel() }
        guard result.command.exitStatus == 0 else {
            await prepared.abandonAll()
            throw ActionError(.runtime, host: ps.from,
                              "runc checkpoint --page-server \(a.instance.name) failed (exit \(result.command.exitStatus)); CRIU leaves the container running: \(result.command.stderrTail(maxBytes: 1500))")
        }
        guard result.accepted, result.forwardBytes > 0 else {
            await prepared.abandonAll()
            throw ActionError(.runtime, host: ps.from, "runc checkpoint --page-server \(a.instance.name) never connected to the tunnel")
        }
        // The rest of the images came back as the command's stdout: validated here (the same
        // rules as any archive: no absolute paths, no `..`, no links out, no devices), hashed.
        var dumped = prepared
        do {
            let validator = try ArchiveStreamValidator(compressed: false)
            let rest = result.command.stdout
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(rest.count, 1), alignment: 16)
            defer { buffer.deallocate() }
            rest.withUnsafeBytes { buffer.copyMemory(from: $0) }
            try validator.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<rest.count]))
            try validator.finish()
            dumped.restEntries = validator.entries
        } catch {
            await prepared.abandonAll()
            throw ActionError(.archiveRefused, host: ps.from, "the rest of the checkpoint images: \(error)")
        }
        dumped.rest = result.command.stdout
        dumped.restSHA256 = SHA256Hasher.hash(result.command.stdout).hex
        _ = PageServerRegistry.shared.set(PageServerRegistry.afterDump(self, a.instance.name), dumped)
        let lines = result.command.stderrText.split(separator: "\n")
        return ["seconds": String(format: "%.3f", seconds(result.duration)), "pageBytes": String(result.forwardBytes),
                "pageSHA256": result.forwardSHA256.hex, "answerBytes": String(result.backwardBytes),
                "answerSHA256": result.backwardSHA256.hex, "images": "page-server",
                "restBytes": String(result.command.stdout.count), "restSHA256": dumped.restSHA256,
                "verified": lines.contains("verified") ? "yes" : "no",
                "marks": lines.first { $0.hasPrefix("marks ") }.map { String($0.dropFirst(6)) } ?? "",
                "controllerMarks": String(format: "%.6f %.6f %.6f", actStarted, result.sourceJobStarted, result.inputSent)]
    }

    /// The dump, started before the freeze and gated on stdin: `runc checkpoint --page-server`,
    /// the verify step's checks, then the rest of the images (everything but the pages) as a tar
    /// on stdout. Logs and marks on stderr.
    func dumpCommand(_ ps: PageServerAction, ops src: InstanceRuntime, migration: String, listenPort: Int) -> String {
        let work = "\(src.host.runtime.workDir)/work/\(migration)/\(ps.instance.name)/checkpoint"
        let checkpoint = src.runc.checkpoint(name: ps.instance.name, imagePath: ps.imagesDir, workPath: work,
                                             options: CheckpointOptions(pageServer: "127.0.0.1:\(listenPort)"))
        let state = src.runc.state(name: ps.instance.name)
        let images = ps.imagesDir.shellQuoted
        return "read -r go && [ \"$go\" = go ] || exit 99; "
            + "c0=\(Self.now); ( \(checkpoint) ) >&2; rc=$?; c1=\(Self.now); if [ $rc -ne 0 ]; then { echo; echo '--- CRIU dump.log:'; "
            + "tail -c 3000 \(RuncCommands.dumpLog(workPath: work).shellQuoted); } >&2 2>/dev/null; exit $rc; fi; "
            + "\(state) >/dev/null 2>&1 && { echo '\(ps.instance.name) still runs after its checkpoint' >&2; exit 66; }; "
            + "test -f \(images)/inventory.img || { echo 'no inventory.img after the checkpoint' >&2; exit 67; }; "
            + "echo \"marks $c0 $c1 \(Self.now)\" >&2; echo verified >&2; "
            + "cd \(images) && tar -c -f - --exclude='pages-*.img' --exclude='pagemap-*.img' ."
    }

    func record(_ host: String, _ command: String, _ startedAt: Date, exit: Int32?, stdout: String, stderr: String, error: String?) {
        guard let key = AttemptScope.key else { return }
        recorder.append(CommandEntry(host: host, command: command, exitStatus: exit, stdoutTail: stdout, stderrTail: stderr,
                                     startedAt: startedAt, duration: Date().timeIntervalSince(startedAt), error: error), key: key)
    }

    // MARK: finish (in the freeze)

    /// The page server has exited cleanly; the rest of the images follows through the validating
    /// relay into the receive directory; the digest manifest of every received file is written
    /// next to it and its own SHA-256 returned (the restore step checks both).
    func pageServerFinish(_ context: StepContext, _ a: PageServerAction) async throws -> [String: String] {
        let receive = receiveCommand(a)
        let startedAt = Date()
        let bytes: Int
        let sha: String
        let entries: Int
        let stderr: String
        let relaySeconds: Double
        if let dumped = PageServerRegistry.shared.get(PageServerRegistry.afterDump(self, a.instance.name)) {
            // The rest of the images is already here (validated, hashed): into the receiving
            // command started before the freeze.
            let out: CommandOutput
            do {
                out = try await dumped.receive.finish(input: Array("go\n".utf8) + dumped.rest, timeout: commandTimeout)
            } catch {
                record(a.to, "(started before the freeze) \(receive)", startedAt, exit: nil, stdout: "", stderr: "", error: String(describing: error))
                recordFailedFinishDigest(String(describing: error), instance: a.instance.name)
                throw ActionError.wrap(error, host: a.to)
            }
            record(a.to, "(started before the freeze) \(receive)", startedAt, exit: out.exitStatus,
                   stdout: "\(dumped.rest.count) bytes in, \(dumped.restEntries) tar entries, sha256 \(dumped.restSHA256)",
                   stderr: String(out.stderrText.suffix(2048)), error: nil)
            guard out.exitStatus == 0 else {
                recordFailedFinishDigest(out.stderrText, instance: a.instance.name)
                throw ActionError(.commandFailed, host: a.to, "receiving the rest of the images failed (exit \(out.exitStatus)): \(out.stderrTail(maxBytes: 1500))")
            }
            (bytes, sha, entries, stderr) = (dumped.rest.count, dumped.restSHA256, dumped.restEntries, out.stderrText)
            relaySeconds = Date().timeIntervalSince(startedAt)
        } else {
            // Resumed after the dump (nothing of it in this process): the rest of the images is
            // relayed from the source's directory.
            let send = "cd \(a.imagesDir.shellQuoted) && tar -c -f - --exclude='pages-*.img' --exclude='pagemap-*.img' ."
            let (source, destination) = try await relayEnds(from: a.from, to: a.to)
            let result: (ValidatedRelayResult, String)
            do {
                result = try await Self.validatedRelay(from: source, send, to: destination, receive, timeout: commandTimeout)
            } catch {
                record("controller", "relay \(a.from): \(send) -> \(a.to): \(receive)", startedAt, exit: nil, stdout: "", stderr: "",
                       error: String(describing: error))
                recordFailedFinishDigest(String(describing: error), instance: a.instance.name)
                throw error
            }
            record("controller", "relay \(a.from): \(send) -> \(a.to): \(receive)", startedAt, exit: 0,
                   stdout: "\(result.0.bytes) bytes, \(result.0.entries) tar entries, sha256 \(result.0.sha256)", stderr: result.1, error: nil)
            (bytes, sha, entries, stderr) = (Int(result.0.bytes), result.0.sha256, result.0.entries, result.1)
            relaySeconds = seconds(result.0.duration)
        }
        guard let line = stderr.split(separator: "\n").last(where: { $0.hasPrefix("manifest ") }) else {
            throw ActionError(.commandFailed, host: a.to, "no manifest digest from \(a.to): \(stderr.suffix(300))")
        }
        let manifest = String(line.dropFirst("manifest ".count)).trimmingCharacters(in: .whitespaces)
        var out = ["bytes": String(bytes), "sha256": sha, "entries": String(entries),
                   "seconds": String(format: "%.3f", relaySeconds), "manifestSHA256": manifest]
        // Where the time went on the destination: waiting for the page server's exit, unpacking
        // the rest, hashing every received file.
        if let times = stderr.split(separator: "\n").last(where: { $0.hasPrefix("times ") }) {
            let words = times.split(separator: " ")
            let t = stride(from: 2, to: words.count, by: 2).compactMap { Double(words[$0].replacingOccurrences(of: ",", with: ".")) }
            if t.count == 4 {
                out["pageServerWaitSeconds"] = String(format: "%.3f", t[1] - t[0])
                out["untarSeconds"] = String(format: "%.3f", t[2] - t[1])
                out["digestSeconds"] = String(format: "%.3f", t[3] - t[2])
            }
        }
        return out
    }

    /// The destination's end of the rest of the images (after a `go` line on stdin): the page
    /// server has exited cleanly; the tar on stdin unpacked into the receive directory; the
    /// manifest (SHA-256 of every file, then their stamps) written, its own SHA-256 on stderr.
    /// When the page server failed, still ran 10 s after the dump (it is then stopped) or the
    /// rest did not unpack, whatever pages arrived are hashed all the same before the non-zero
    /// exit: a rollback brings back only pages that match a recorded digest.
    func receiveCommand(_ a: PageServerAction) -> String {
        let side = MigrationPageServerFiles(a.receiveDir)
        let b = a.receiveDir.shellQuoted
        let hash = Self.digestTool + "( cd \(b) && { \(Self.manifestCommand); echo '-- stamps'; \(Self.stampCommand); } ) > \(side.manifest.shellQuoted); "
            + "echo \"manifest $(sha256sum \(side.manifest.shellQuoted) | cut -c1-64)\" >&2"
        let hashOnFailure = "if ls \(b)/pages-*.img >/dev/null 2>&1; then \(hash); fi; exit 1"
        return "set -e; t0=\(Self.now); p=$(cat \(side.pid.shellQuoted)); i=0; fail=''; "
            // Gone, or a zombie: a daemon's exit is final even before its new parent reaps it
            // (the lab's PID 1 reaps orphans late: ~1.5 s here).
            + "while [ -d /proc/$p ] && ! grep -q '^State:[[:space:]]*Z' /proc/$p/status 2>/dev/null; do i=$((i+1)); "
            + "if [ $i -gt 1000 ]; then fail='the page server still ran 10 s after the dump (stopped)'; "
            + "\(Self.stopPageServerCommand(a.receiveDir)); sleep 0.2; break; fi; sleep 0.01; done; "
            + "if [ -z \"$fail\" ] && grep -q 'Error' \(side.log.shellQuoted); then fail='the page server failed:'; fi; "
            + "if [ -n \"$fail\" ]; then echo \"$fail\" >&2; tail -c 2000 \(side.log.shellQuoted) >&2 2>/dev/null || true; \(hashOnFailure); fi; "
            + "t1=\(Self.now); ls \(b)/pages-*.img >/dev/null; "
            // `cat` drains what tar leaves unread after the end-of-archive blocks (a short read
            // from a pipe ends a record early), so the sender never sees its input refused.
            + "if ! tar -x --no-same-owner --no-overwrite-dir -f - -C \(b); then echo 'unpacking the rest of the images failed' >&2; \(hashOnFailure); fi; cat > /dev/null; t2=\(Self.now); "
            + hash + "; t3=\(Self.now); "
            + "echo \"times start $t0 pageServerGone $t1 untarred $t2 digested $t3\" >&2"
    }

    /// The manifest digest a failed finish reported (`manifest HEX` on its stderr), recorded
    /// for the rollback.
    func recordFailedFinishDigest(_ text: String, instance: String) {
        guard let range = text.range(of: "manifest [0-9a-f]{64}", options: [.regularExpression, .backwards]) else { return }
        let digest = String(text[range].dropFirst("manifest ".count))
        PageServerRegistry.shared.setDigest(PageServerRegistry.afterDump(self, instance), digest)
    }

    /// The restore's refusal (exit 65) unless the manifest is the one recorded (`digest`: a shell
    /// word) and every received file's inode, size and ctime are the manifest's.
    func restoreCheck(_ a: PageServerAction, digest: String) -> String {
        let side = MigrationPageServerFiles(a.receiveDir)
        return "m=\(side.manifest.shellQuoted); "
            + "[ \"$(sha256sum \"$m\" 2>/dev/null | cut -c1-64)\" = \(digest) ] || { echo 'the manifest of the received images is not the one recorded: refusing to restore' >&2; exit 65; }; "
            + "d0=\(Self.now); "
            + "[ \"$(cd \(a.receiveDir.shellQuoted) && \(Self.stampCommand))\" = \"$(sed -n '/^-- stamps$/,$p' \"$m\" | tail -n +2)\" ] "
            + "|| { echo 'the received images changed since their digest was recorded: refusing to restore' >&2; exit 65; }; "
            + "echo \"digest-s $d0 \(Self.now)\"; "
    }

    /// `ValidatingRelay.run` of the images (uncompressed tar), also returning the destination
    /// command's stderr (which carries the manifest digest).
    static func validatedRelay(from source: SSHConnection, _ sourceCommand: String, to destination: SSHConnection,
                               _ destinationCommand: String, timeout: Duration?) async throws -> (ValidatedRelayResult, String) {
        let r = try await ValidatingRelay.run(from: source, sourceCommand, to: destination, destinationCommand,
                                              compressed: false, timeout: timeout, what: "the images")
        return (r, r.destinationStderr)
    }

    // MARK: restore (the freeze ends here)

    /// One command on the destination: the manifest is the one the controller recorded, every
    /// received file still matches it, no copy of the container runs, then `runc restore`.
    func pageServerRestore(_ context: StepContext, _ a: RestoreAction) async throws -> [String: String] {
        let step = context.step
        let h = try hostName(of: step)
        let ps = try pageServerAction(step, a.instance)
        let finishID = graph.steps.first { s in
            if case .pageServerFinish(let f) = s.action, f.instance.name == a.instance.name, s.migration == step.migration { return true }
            return false
        }?.id
        guard let finishID, let manifestDigest = context.outputs[finishID]?["manifestSHA256"], manifestDigest.count == 64 else {
            throw ActionError(.digestMismatch, host: h, "no digest of the received images was recorded; refusing to restore \(a.instance.name)")
        }
        let started = ContinuousClock.now
        var out: [String: String]
        if let dumped = PageServerRegistry.shared.set(PageServerRegistry.afterDump(self, a.instance.name), nil) {
            // The restore command was started before the freeze; it gets the digest on stdin.
            let startedAt = Date()
            let result: CommandOutput
            do {
                result = try await dumped.restore.finish(input: Array((manifestDigest + "\n").utf8), timeout: commandTimeout)
            } catch {
                record(h, "(started before the freeze) \(dumped.restore.command)", startedAt, exit: nil, stdout: "", stderr: "", error: String(describing: error))
                throw ActionError.wrap(error, host: h)
            }
            record(h, "(started before the freeze) \(dumped.restore.command)", startedAt, exit: result.exitStatus,
                   stdout: String(result.stdoutText.suffix(2048)), stderr: String(result.stderrText.suffix(2048)), error: nil)
            out = try Self.restoreOutcome(result, host: h, name: a.instance.name)
        } else {
            let ops = try await ops(a.instance, on: h)
            let m = try migration(of: step)
            let work = "\(ops.host.runtime.workDir)/work/\(m.name)/\(a.instance.name)/restore"
            out = try await runcRestore(ops: ops, imagesDir: a.imagesDir, work: work, check: restoreCheck(ps, digest: manifestDigest.shellQuoted))
        }
        out["stepCommandSeconds"] = String(format: "%.3f", seconds(ContinuousClock.now - started))
        out["imagesVerified"] = manifestDigest
        return out
    }

    // MARK: rollback: the pages come back

    /// Rollback after a page-server dump: the pages exist only on the destination. They are relayed
    /// back (validated) into the source's checkpoint directory, which then holds a complete
    /// checkpoint for `restoreOnSource`. Nothing to do when the container still runs on the source
    /// (the dump failed and CRIU resumed it); the page server is stopped in any case.
    ///
    /// The pages come back only when a digest of them was recorded (finish's `manifestSHA256`,
    /// or the one a failed finish reported): without one the return refuses and the container
    /// stays down, its checkpoint on the destination. They are assembled with hard links to the
    /// rest of the checkpoint in a fresh directory holding a completion marker
    /// (`.pages-returned`), which then replaces the checkpoint directory by one rename (two
    /// when the checkpoint directory is on disk rather than a symlink to tmpfs; an interrupted
    /// pair is repaired by the next attempt). Only the marker makes a later attempt skip.
    func pageServerReturn(_ context: StepContext, _ a: PageServerAction) async throws -> [String: String] {
        let side = MigrationPageServerFiles(a.receiveDir)
        let stop = Self.stopPageServerCommand(a.receiveDir)
        let key = PageServerRegistry.key(self, a.instance.name)
        if let prepared = PageServerRegistry.shared.set(key, nil) {
            await prepared.listener.cancel()
            await prepared.abandonAll()
        }
        if let dumped = PageServerRegistry.shared.set(PageServerRegistry.afterDump(self, a.instance.name), nil) { await dumped.abandonAll() }
        if try await ops(a.instance, on: a.from).isRunning() {
            _ = try? await sh(a.to, stop)
            return ["returned": "nothing: \(a.instance.name) still runs on \(a.from)"]
        }
        let images = a.imagesDir.shellQuoted
        let probe = try await sh(a.from, "test -f \(images)/inventory.img && test -f \(images)/\(Self.returnedMarker)")
        if probe.succeeded { return ["returned": "nothing: \(a.imagesDir) already holds the pages (\(Self.returnedMarker) present)"] }
        let b = a.receiveDir.shellQuoted
        // When the destination recorded the received files' digests (finish), the pages that come
        // back must be those: the manifest is checked against the SHA-256 the controller holds,
        // the returned files against the manifest, before they join the source's checkpoint.
        var expected: [String] = []
        let finishID = graph.steps.first { s in
            if case .pageServerFinish(let f) = s.action, f.instance.name == a.instance.name, s.migration == context.step.migration { return true }
            return false
        }?.id
        let recorded = finishID.flatMap { context.outputs[$0]?["manifestSHA256"] }
            ?? PageServerRegistry.shared.digest(PageServerRegistry.afterDump(self, a.instance.name))
        guard let digest = recorded, digest.count == 64 else {
            _ = try? await sh(a.to, stop)
            throw ActionError(.digestMismatch, host: a.to,
                              "no digest of \(a.instance.name)'s received pages was recorded: not restoring unverified memory on \(a.from). "
                                + "\(a.instance.name) stays down; its checkpoint is on \(a.to) in \(a.receiveDir) (pages) and on \(a.from) in \(a.imagesDir) (the rest)")
        }
        do {
            let manifest = try await must(a.to, "cat \(side.manifest.shellQuoted)", "read the manifest of the received images")
            guard SHA256Hasher.hash(manifest.stdout).hex == digest else {
                throw ActionError(.digestMismatch, host: a.to,
                                  "the manifest of \(a.instance.name)'s received images is not the one recorded: not bringing its pages back")
            }
            for line in manifest.stdoutText.split(separator: "\n") {
                if line == "-- stamps" { break }
                let parts = line.split(separator: " ", maxSplits: 1)
                guard parts.count == 2 else { continue }
                var name = String(parts[1]).trimmingCharacters(in: .whitespaces)
                if name.hasPrefix("*") { name.removeFirst() }
                if name.hasPrefix("pages-") || name.hasPrefix("pagemap-") { expected.append("\(parts[0])  \(name)") }
            }
        }
        guard !expected.isEmpty else {
            _ = try? await sh(a.to, stop)
            throw ActionError(.digestMismatch, host: a.to,
                              "the recorded manifest of \(a.instance.name)'s received images lists no pages: not restoring on \(a.from); "
                                + "its checkpoint is on \(a.to) in \(a.receiveDir) and on \(a.from) in \(a.imagesDir)")
        }
        let check = "( cd \"$r\" && printf '%s\\n' \(expected.map(\.shellQuoted).joined(separator: " ")) | sha256sum -c --quiet --strict ) "
            + "|| { rm -rf \"$r\"; echo 'the returned pages differ from the digests recorded when they were received: not using them' >&2; exit 65; }; "
        let send = "\(stop); cd \(b) && tar -c -f - pagemap-*.img pages-*.img"
        let marker = Self.returnedMarker
        let receive = "set -e; d=$(readlink -f \(images)); "
            // An earlier attempt interrupted between its two renames (checkpoint directory on disk).
            + "if [ ! -e \"$d\" ] && [ -d \"$d.old\" ]; then mv -T \"$d.old\" \"$d\"; fi; "
            + "[ -f \"$d/inventory.img\" ]; r=\"$d.return\"; rm -rf \"$r\"; mkdir -m 700 \"$r\"; "
            + "tar -x --no-same-owner -f - -C \"$r\"; cat > /dev/null; " + check
            + "for f in \"$d\"/*; do n=${f##*/}; case \"$n\" in pages-*.img|pagemap-*.img) ;; *) ln \"$f\" \"$r/$n\" 2>/dev/null || cp -a \"$f\" \"$r/$n\";; esac; done; "
            + "[ -f \"$r/inventory.img\" ]; : > \"$r/\(marker)\"; "
            + "if [ -L \(images) ]; then ln -sfn \"$r\" \(images).new && mv -T \(images).new \(images); rm -rf \"$d\"; "
            + "else mv -T \"$d\" \"$d.old\" && mv -T \"$r\" \"$d\"; rm -rf \"$d.old\"; fi; "
            + "echo \"returned $(ls \(images)/ | grep -c '^pages-')\" >&2"
        let (source, destination) = try await relayEnds(from: a.to, to: a.from)
        let startedAt = Date()
        let result: (ValidatedRelayResult, String)
        do {
            result = try await Self.validatedRelay(from: source, send, to: destination, receive, timeout: commandTimeout)
        } catch {
            record("controller", "relay \(a.to): \(send) -> \(a.from): \(receive)", startedAt, exit: nil, stdout: "", stderr: "",
                   error: String(describing: error))
            throw error
        }
        record("controller", "relay \(a.to): \(send) -> \(a.from): \(receive)", startedAt, exit: 0,
               stdout: "\(result.0.bytes) bytes, \(result.0.entries) tar entries, sha256 \(result.0.sha256)", stderr: result.1, error: nil)
        return ["bytes": String(result.0.bytes), "sha256": result.0.sha256, "entries": String(result.0.entries),
                "checkedAgainstManifest": "true"]
    }

    /// The completion marker of a return: written in the new checkpoint directory before the
    /// rename that puts it in place.
    static let returnedMarker = ".pages-returned"
}

/// The side files of a page-server receive directory (see `MigrationCompiler.pageServerSideFiles`).
struct MigrationPageServerFiles {
    let pid: String
    let log: String
    let manifest: String
    init(_ receiveDir: String) {
        pid = receiveDir + ".pageserver.pid"
        log = receiveDir + ".pageserver.log"
        manifest = receiveDir + ".manifest"
    }
}
