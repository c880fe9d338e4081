import ArgumentParser
import Foundation
import MigPlanBasics
import MigPlanModel
import MigPlanSSH

/// `migplan check PLAN`: connects to every host of a plan (concurrently) and reports, per host, the
/// negotiated algorithms, the host key fingerprint and the tools later steps need.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Connect to every host of a plan and report algorithms, host keys and tools.",
        discussion: """
        Connects to each host of the plan at the same time, exactly as a run would: only the \
        plan's ciphers, key exchanges, MACs and host key types; the host key verified against the \
        plan's known_hosts before authenticating; public-key authentication only (a key's \
        passphrase is read from the environment variable the plan names). Per host it reports the \
        negotiated algorithms, the host key fingerprint (SHA256, as OpenSSH prints it), the server \
        banner, whether runc, docker and criu are on PATH, whether `criu check` passes, and the \
        free space of the host's work directory (`df -PB1`).

        A host fails when it cannot be reached or authenticated, when neither runc nor docker is \
        present, or when `criu check` fails on a host allowed to checkpoint (hosts.NAME.runtime.checkpoint).

        Examples:
          migplan check plans/face-stateful.yaml
          migplan check --format json plans/face-multiuser.yaml | jq '.hosts[].negotiated'

        Exit status: 0 every host is fine, 1 the plan is invalid or a host failed, 2 usage error.
        """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @Argument(help: ArgumentHelp("The plan file (YAML).", valueName: "plan"))
    var plan: String

    @Option(name: .long, help: "Output format: text or json.")
    var format: Format = .text

    @Option(name: .long, help: "Only check these hosts (repeatable).")
    var host: [String] = []

    @Option(name: .long, help: ArgumentHelp("Upload this many bytes into `cat > /dev/null` (benchmark).", visibility: .hidden))
    var benchUpload: Int64?

    @Option(name: .long, help: ArgumentHelp("Host for --bench-upload (the source for --bench-relay-to).", visibility: .hidden))
    var benchHost: String?

    @Option(name: .long, help: ArgumentHelp("With --bench-upload: relay the bytes from --bench-host to this host through the controller.", visibility: .hidden))
    var benchRelayTo: String?

    func validate() throws {
        if benchUpload != nil && benchHost == nil { throw ValidationError("--bench-upload needs --bench-host NAME") }
        if let b = benchUpload, b <= 0 { throw ValidationError("--bench-upload needs a positive byte count") }
    }

    func run() async throws {
        let loaded: Plan
        do {
            loaded = try PlanLoader.loadValid(file: plan)
        } catch {
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        if let bytes = benchUpload, let name = benchHost {
            if let to = benchRelayTo {
                try await CheckBench.relay(plan: loaded, from: name, to: to, bytes: bytes)
            } else {
                try await CheckBench.upload(plan: loaded, hostName: name, bytes: bytes)
            }
            return
        }
        let hosts = host.isEmpty ? loaded.hosts : loaded.hosts.filter { host.contains($0.name) }
        for name in host where loaded.host(named: name) == nil {
            throw ValidationError("the plan has no host named \"\(name)\"")
        }
        let reports = await HostChecker(plan: loaded).check(hosts)
        switch format {
        case .text: print(CheckOutput.text(plan: plan, reports), terminator: "")
        case .json: print(try CheckOutput.json(plan: plan, reports))
        }
        if reports.contains(where: { !$0.ok }) { throw ExitCode(MigPlanExit.failure) }
    }
}

/// What `check` found on one host.
struct HostCheckReport: Codable, Sendable {
    struct Failure: Codable, Sendable {
        var kind: String
        var operation: String
        var message: String
        var retryable: Bool
        var libssh2: String?
    }
    struct Tools: Codable, Sendable {
        var runc: String?
        var docker: String?
        var criu: String?
    }
    struct CriuCheck: Codable, Sendable {
        var ok: Bool
        var output: String
    }
    struct WorkDir: Codable, Sendable {
        var path: String
        var checkedPath: String
        var availableBytes: Int64?
    }

    var host: String
    var address: String
    var port: Int
    var user: String
    var ok: Bool
    var problems: [String] = []
    var error: Failure?
    var hostKeyType: String?
    var fingerprint: String?
    var serverBanner: String?
    var negotiated: NegotiatedAlgorithms?
    var connectMilliseconds: Int?
    var tools: Tools?
    var criuCheck: CriuCheck?
    var workDir: WorkDir?
}

/// The SSH settings of a plan, turned into what the SSH layer takes.
enum PlanSSH {
    static func algorithms(_ plan: Plan) -> SSHAlgorithms {
        SSHAlgorithms(ciphers: plan.ssh.ciphers, kex: plan.ssh.kex, macs: plan.ssh.macs, hostKeyTypes: plan.ssh.hostKeyTypes)
    }

    static func endpoint(_ host: MigPlanModel.Host) -> SSHEndpoint {
        SSHEndpoint(hostName: host.name, address: host.address, port: host.port, user: host.user)
    }

    /// The host's key; its passphrase comes from the environment variable the plan names.
    static func identity(_ plan: Plan, _ host: MigPlanModel.Host, environment: [String: String] = ProcessInfo.processInfo.environment)
        -> SSHIdentity?
    {
        guard let key = plan.key(named: host.key) else { return nil }
        return SSHIdentity(privateKeyPath: key.path, passphrase: key.passphraseEnv.flatMap { environment[$0] })
    }

    static func connect(_ plan: Plan, _ host: MigPlanModel.Host) async throws(SSHError) -> SSHConnection {
        guard let identity = identity(plan, host) else {
            throw SSHError(.keyFileUnreadable, hostName: host.name, address: host.address, port: host.port,
                           operation: "plan", message: "the plan has no key named \"\(host.key)\"")
        }
        return try await SSHConnection.connect(
            to: endpoint(host), algorithms: algorithms(plan), identity: identity, knownHostsPath: plan.ssh.knownHosts,
            connectTimeout: plan.ssh.connectTimeout,
            keepaliveInterval: plan.ssh.keepalive > .zero ? plan.ssh.keepalive : nil)
    }
}

struct HostChecker {
    var plan: Plan
    var commandTimeout: Duration = .seconds(60)

    func check(_ hosts: [MigPlanModel.Host]) async -> [HostCheckReport] {
        await withTaskGroup(of: (Int, HostCheckReport).self) { group in
            for (i, host) in hosts.enumerated() {
                group.addTask { (i, await check(host)) }
            }
            var out: [(Int, HostCheckReport)] = []
            for await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    /// The shell snippet that lists the tools: one `tool NAME PATH` line each (`-` when absent).
    static let toolsCommand = "for t in runc docker criu; do p=$(command -v \"$t\") && echo \"tool $t $p\" || echo \"tool $t -\"; done"

    /// `df -PB1` of the work dir, or of its nearest existing parent (check never creates anything).
    static func dfCommand(_ workDir: String) -> String {
        "d=\(workDir.shellQuoted); while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; echo \"path $d\"; df -PB1 \"$d\""
    }

    func check(_ host: MigPlanModel.Host) async -> HostCheckReport {
        var report = HostCheckReport(host: host.name, address: host.address, port: host.port, user: host.user, ok: false)
        let conn: SSHConnection
        do {
            conn = try await PlanSSH.connect(plan, host)
        } catch {
            report.error = .init(kind: error.kind.rawValue, operation: error.operation, message: error.message,
                                 retryable: error.isRetryable,
                                 libssh2: error.libssh2Message.map { m in error.libssh2Code.map { "\($0): \(m)" } ?? m })
            report.problems.append("\(error)")
            return report
        }
        report.hostKeyType = conn.hostKeyType
        report.fingerprint = conn.hostKeyFingerprint
        report.serverBanner = conn.serverBanner
        report.negotiated = conn.negotiatedAlgorithms
        let c = conn.connectDuration.components
        report.connectMilliseconds = Int(c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000)
        do {
            let tools = try await conn.run(Self.toolsCommand, timeout: commandTimeout)
            var found = HostCheckReport.Tools()
            for line in tools.stdoutText.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
                guard parts.count == 3, parts[0] == "tool" else { continue }
                let path = parts[2] == "-" ? nil : parts[2]
                switch parts[1] {
                case "runc": found.runc = path
                case "docker": found.docker = path
                case "criu": found.criu = path
                default: break
                }
            }
            report.tools = found
            if found.runc == nil && found.docker == nil { report.problems.append("neither runc nor docker is installed") }
            if found.criu != nil {
                let criu = try await conn.run("criu check 2>&1", timeout: commandTimeout)
                let lines = criu.stdoutText.split(separator: "\n").map(String.init)
                    .filter { !$0.contains("RLIMIT_NOFILE") }
                report.criuCheck = .init(ok: criu.exitStatus == 0, output: lines.last ?? "")
                if criu.exitStatus != 0 && host.runtime.checkpoint {
                    report.problems.append("criu check failed: \(lines.suffix(3).joined(separator: " / "))")
                }
            } else if host.runtime.checkpoint {
                report.problems.append("criu is not installed (needed to checkpoint)")
            }
            let df = try await conn.run(Self.dfCommand(host.runtime.workDir), timeout: commandTimeout)
            var checked = host.runtime.workDir
            var available: Int64?
            for line in df.stdoutText.split(separator: "\n") {
                if line.hasPrefix("path ") { checked = String(line.dropFirst(5)) }
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                if f.count >= 6, let a = Int64(f[3]) { available = a }
            }
            report.workDir = .init(path: host.runtime.workDir, checkedPath: checked, availableBytes: available)
            if available == nil { report.problems.append("cannot read the free space of \(host.runtime.workDir): \(df.stderrTail(maxBytes: 300))") }
        } catch {
            report.error = .init(kind: error.kind.rawValue, operation: error.operation, message: error.message,
                                 retryable: error.isRetryable, libssh2: error.libssh2Message)
            report.problems.append("\(error)")
        }
        await conn.disconnect()
        report.ok = report.problems.isEmpty
        return report
    }
}

enum CheckOutput {
    static func bytes(_ n: Int64) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var v = Double(n)
        var i = 0
        while v >= 1000 && i < units.count - 1 { v /= 1000; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    static func text(plan: String, _ reports: [HostCheckReport]) -> String {
        var out = ""
        for r in reports {
            let hp = r.port == 22 ? r.address : "[\(r.address)]:\(r.port)"
            out += "\(r.host) (\(r.user)@\(hp)): \(r.ok ? "ok" : "FAILED")\n"
            if let fp = r.fingerprint { out += "  host key     \(r.hostKeyType ?? "?") \(fp)\n" }
            if let n = r.negotiated { out += "  algorithms   \(n.summary)\n" }
            if let b = r.serverBanner { out += "  server       \(b)\n" }
            if let ms = r.connectMilliseconds { out += "  connected in \(ms) ms\n" }
            if let t = r.tools {
                out += "  runc         \(t.runc ?? "not found")\n"
                out += "  docker       \(t.docker ?? "not found")\n"
                var criu = t.criu ?? "not found"
                if let c = r.criuCheck { criu += " (criu check: \(c.ok ? "ok" : "FAILED")\(c.output.isEmpty ? "" : ", \(c.output)"))" }
                out += "  criu         \(criu)\n"
            }
            if let w = r.workDir {
                let free = w.availableBytes.map { bytes($0) + " free" } ?? "unknown"
                let at = w.checkedPath == w.path ? w.path : "\(w.path) (not there yet; \(w.checkedPath))"
                out += "  work dir     \(at): \(free)\n"
            }
            for p in r.problems { out += "  problem: \(p)\n" }
        }
        let failed = reports.filter { !$0.ok }.count
        out += "\(plan): \(reports.count - failed) of \(reports.count) hosts ok\n"
        return out
    }

    struct Document: Codable {
        var formatVersion = 1
        var plan: String
        var ok: Bool
        var hosts: [HostCheckReport]
    }

    static func json(plan: String, _ reports: [HostCheckReport]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let doc = Document(plan: plan, ok: reports.allSatisfy(\.ok), hosts: reports)
        return String(decoding: try encoder.encode(doc), as: UTF8.self)
    }
}

/// `check --bench-upload BYTES --bench-host NAME`: throughput of one exec channel into
/// `cat > /dev/null` (bench/ssh-throughput/run compares it with OpenSSH).
enum CheckBench {
    static func upload(plan: Plan, hostName: String, bytes: Int64) async throws {
        guard let host = plan.host(named: hostName) else { throw ValidationError("the plan has no host named \"\(hostName)\"") }
        let conn: SSHConnection
        do { conn = try await PlanSSH.connect(plan, host) } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        // Incompressible bytes (no compression is negotiated anyway), generated once.
        let source = RepeatingSource(pattern: secureRandomBytes(4 << 20), total: bytes)
        let result: StreamResult
        do { result = try await conn.runStreaming("cat > /dev/null", stdin: source) } catch {
            await conn.disconnect()
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        await conn.disconnect()
        guard result.exitStatus == 0, result.stdinBytes == bytes else {
            FileHandle.standardError.write(Data("bench: remote exited \(result.exitStatus) after \(result.stdinBytes) bytes\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        let c = result.duration.components
        let seconds = Double(c.seconds) + Double(c.attoseconds) / 1e18
        print(String(format: "bench-upload host=%@ bytes=%lld seconds=%.3f MBps=%.1f %@", hostName, bytes, seconds,
                     Double(bytes) / seconds / 1e6, conn.negotiatedAlgorithms.summary))
    }

    /// `head -c BYTES /dev/zero` on one host relayed into `cat > /dev/null` on another.
    static func relay(plan: Plan, from: String, to: String, bytes: Int64) async throws {
        guard let a = plan.host(named: from), let b = plan.host(named: to) else {
            throw ValidationError("the plan has no host named \"\(plan.host(named: from) == nil ? from : to)\"")
        }
        let src: SSHConnection
        let dst: SSHConnection
        do {
            src = try await PlanSSH.connect(plan, a)
            dst = try await PlanSSH.connect(plan, b)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        let result: RelayResult
        do {
            result = try await SSHRelay.pipe(from: src, command: "head -c \(bytes) /dev/zero", to: dst, command: "cat > /dev/null")
        } catch {
            await src.disconnect()
            await dst.disconnect()
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(MigPlanExit.failure)
        }
        await src.disconnect()
        await dst.disconnect()
        let c = result.duration.components
        let seconds = Double(c.seconds) + Double(c.attoseconds) / 1e18
        print(String(format: "bench-relay from=%@ to=%@ bytes=%lld seconds=%.3f MBps=%.1f sha256=%@", from, to, result.bytes,
                     seconds, Double(result.bytes) / seconds / 1e6, result.sha256.hex))
    }
}
