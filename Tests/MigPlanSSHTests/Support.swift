import Foundation
import MigPlanSSH
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Starts `path` with `args` (posix_spawn), stdout and stderr to `outputFD` (or /dev/null).
func spawn(_ path: String, _ args: [String], outputFD: Int32? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let fd = outputFD {
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
    guard rc == 0 else { throw SSHLocalIOError("posix_spawn \(path): \(String(cString: strerror(rc)))") }
    return pid
}

/// Waits for `pid` and returns its exit status (128 + signal when killed).
func waitExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    if status & 0x7f == 0 { return (status >> 8) & 0xff }
    return 128 + (status & 0x7f)
}

/// Runs a local program and returns its exit status and combined output.
@discardableResult
func sh(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw SSHLocalIOError("pipe failed") }
    let pid: pid_t
    do { pid = try spawn(path, args, outputFD: fds[1]) } catch {
        close(fds[0]); close(fds[1])
        throw error
    }
    close(fds[1])
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fds[0], &chunk, chunk.count)
        if n > 0 { output.append(contentsOf: chunk[0..<n]); continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    close(fds[0])
    return (waitExit(pid), String(decoding: output, as: UTF8.self))
}

/// A fresh temporary directory, removed by `remove()`.
struct TempDir {
    let path: String
    init(_ label: String) throws {
        var template = Array((NSTemporaryDirectory() + "/migplan-\(label)-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw SSHLocalIOError("mkdtemp failed") }
        path = String(cString: p)
    }
    func file(_ name: String) -> String { path + "/" + name }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// An ed25519 key pair made with ssh-keygen.
struct KeyPair {
    let privatePath: String
    var publicPath: String { privatePath + ".pub" }
    var publicLine: String { (try? String(contentsOfFile: publicPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "" }

    init(at path: String, passphrase: String = "", type: String = "ed25519") throws {
        privatePath = path
        let args = type == "ecdsa" ? ["-q", "-t", "ecdsa", "-b", "256"] : ["-q", "-t", type]
        let r = try sh("/usr/bin/ssh-keygen", args + ["-N", passphrase, "-C", "migplan-test", "-f", path])
        guard r.status == 0 else { throw SSHLocalIOError("ssh-keygen: \(r.output)") }
    }

    /// The base64 blob of the public key (second field of the .pub line).
    var publicBlob: String { String(publicLine.split(separator: " ")[1]) }
}

/// A free TCP port on 127.0.0.1 (bound then released; sshd takes it right after).
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
    }
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A real OpenSSH sshd started by the test on 127.0.0.1 with its own host key and config.
final class LoopbackSSHD: @unchecked Sendable {
    struct Options {
        var ciphers = "aes256-ctr"
        var macs = "hmac-sha2-256"
        var kex = "diffie-hellman-group-exchange-sha256"
        var hostKeyAlgorithms = "ssh-ed25519"
        var passwordOnly = false
    }

    let dir: TempDir
    let port: Int
    let hostKey: KeyPair
    let pid: pid_t
    let logPath: String
    private var stopped = false

    /// Starts sshd; `authorizedKeys` lists public key lines accepted for root.
    init(_ label: String, options: Options = Options(), authorizedKeys: [String], hostKey existing: KeyPair? = nil,
         port fixedPort: Int? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd") else {
            throw SSHLocalIOError("/usr/sbin/sshd missing: install openssh-server (scripts/install-deps)")
        }
        dir = try TempDir("sshd-\(label)")
        hostKey = try existing ?? KeyPair(at: dir.file("host_ed25519"))
        port = fixedPort ?? freeLoopbackPort()
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        try (authorizedKeys.joined(separator: "\n") + "\n").write(toFile: dir.file("authorized_keys"), atomically: true, encoding: .utf8)
        var config = """
        Port \(port)
        ListenAddress 127.0.0.1
        HostKey \(hostKey.privatePath)
        PidFile \(dir.file("sshd.pid"))
        AuthorizedKeysFile \(dir.file("authorized_keys"))
        UsePAM no
        StrictModes no
        Ciphers \(options.ciphers)
        MACs \(options.macs)
        KexAlgorithms \(options.kex)
        HostKeyAlgorithms \(options.hostKeyAlgorithms)
        Subsystem sftp internal-sftp
        LogLevel VERBOSE

        """
        if options.passwordOnly {
            config += "PubkeyAuthentication no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin yes\n"
        } else {
            config += "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        }
        try config.write(toFile: dir.file("sshd_config"), atomically: true, encoding: .utf8)
        logPath = dir.file("sshd.log")
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(logFD) }
        pid = try spawn("/usr/sbin/sshd", ["-D", "-e", "-f", dir.file("sshd_config")], outputFD: logFD)
        // Ready when the port accepts connections.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                stopped = true
                throw SSHLocalIOError("sshd exited: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
            }
            if LoopbackSSHD.canConnect(port: port) { return }
            usleep(20_000)
        }
        throw SSHLocalIOError("sshd did not listen on 127.0.0.1:\(port)")
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    var endpoint: SSHEndpoint { SSHEndpoint(hostName: "loopback", address: "127.0.0.1", port: port, user: "root") }

    /// A known_hosts line for this server, as ssh-keyscan would print it.
    var knownHostsLine: String { "[127.0.0.1]:\(port) ssh-ed25519 \(hostKey.publicBlob)" }

    /// PIDs of the per-connection sshd children (for freezing a session in dead-peer tests).
    var childPIDs: [Int32] {
        let path = "/proc/\(pid)/task/\(pid)/children"
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func stop() {
        if !stopped {
            stopped = true
            kill(pid, SIGTERM)
            _ = waitExit(pid)
        }
        dir.remove()
    }
}

/// The controller side of a loopback test: a user key and a known_hosts file.
struct LoopbackClient {
    let dir: TempDir
    let key: KeyPair
    let knownHosts: String

    init(knownHostsLines: [String], key existing: KeyPair? = nil) throws {
        dir = try TempDir("client")
        key = try existing ?? KeyPair(at: dir.file("id_ed25519"))
        knownHosts = dir.file("known_hosts")
        try (knownHostsLines.joined(separator: "\n") + "\n").write(toFile: knownHosts, atomically: true, encoding: .utf8)
    }

    var identity: SSHIdentity { SSHIdentity(privateKeyPath: key.privatePath) }
}

/// Runs `body` and returns the SSHError it threw (nil if it did not throw).
func sshError<T>(_ body: () async throws -> T) async -> SSHError? {
    do {
        _ = try await body()
        return nil
    } catch let error as SSHError {
        return error
    } catch {
        Issue.record("expected an SSHError, got \(error)")
        return nil
    }
}

// MARK: - The lab

/// The lab's paths (contract in docs/lab.md), or why the lab tests cannot run.
enum Lab {
    static var root: String {
        if let dir = ProcessInfo.processInfo.environment["MIGPLAN_LAB_DIR"] { return dir }
        // Tests/MigPlanSSHTests/Support.swift → repo root
        let here = URL(fileURLWithPath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".lab").path
    }
    static var skipRequested: Bool { ProcessInfo.processInfo.environment["MIGPLAN_SKIP_LAB"] == "1" }
    static var key: String { root + "/keys/controller_ed25519" }
    static var knownHosts: String { root + "/known_hosts" }

    static func endpoint(_ n: Int) -> SSHEndpoint {
        SSHEndpoint(hostName: "instance\(n)", address: "10.77.0.\(10 + n)", port: 22, user: "root")
    }

    /// Fails the test (never skips silently) when the lab is absent.
    static func requireUp() throws {
        let fm = FileManager.default
        guard fm.fileExists(atPath: key), fm.fileExists(atPath: knownHosts) else {
            let message = "the lab is not up (\(root) has no keys/known_hosts): run `scripts/lab up` "
                + "(or set MIGPLAN_SKIP_LAB=1 to skip lab tests)"
            Issue.record(Comment(rawValue: message))
            throw SSHLocalIOError("lab not up")
        }
    }

    static func connect(_ n: Int, keepalive: Duration? = .seconds(15)) async throws -> SSHConnection {
        try requireUp()
        return try await SSHConnection.connect(
            to: endpoint(n), algorithms: .paperDefaults, identity: SSHIdentity(privateKeyPath: key),
            knownHostsPath: knownHosts, connectTimeout: .seconds(10), keepaliveInterval: keepalive)
    }
}
