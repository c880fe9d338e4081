import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `migplan lab up|down|status|exec`: the local lab of real hosts (docs/lab.md).
///
/// The lab is made by `scripts/lab` (bash, root); this command finds that script and replaces
/// itself with it, so output, input and exit status are the script's own.
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Create, check or remove the local lab of real hosts (runs scripts/lab).",
        discussion: """
        The lab is a set of hosts on this machine: network namespaces instance1..instance8 on the \
        bridge mpbr0 (controller 10.77.0.1, instanceN = 10.77.0.(10+N)), each with its own sshd \
        (public-key only, aes256-ctr, diffie-hellman-group-exchange-sha256, hmac-sha2-256), its \
        own /run, /var/lib/docker, /var/lib/containerd and /var/lib/migplan, and (on the first \
        hosts) its own dockerd; plus PostgreSQL 15 with SSL on 10.77.0.1:5433 for the journal. \
        State lives in .lab/ at the repository root (MIGPLAN_LAB_DIR overrides). Needs root. \
        See docs/lab.md.

        The script is found in MIGPLAN_SCRIPTS_DIR if set, else in scripts/ of the checkout that \
        holds this executable (or of the current directory).

        Exit statuses are those of scripts/lab: 0 success (for status: everything healthy), \
        1 failure, 2 usage error.
        """,
        subcommands: [Up.self, Down.self, Status.self, Exec.self]
    )
}

extension LabCommand {
    /// `migplan lab up [--hosts N] [--docker-hosts M]`
    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create or repair the lab (idempotent: a healthy lab is left as it is).",
            discussion: """
            Without --hosts the lab keeps the number of hosts it already has (2 for a new lab).
            """
        )

        @Option(name: .long, help: "Number of hosts, 1...\(LabScript.maxHosts) (default: the current count, or 2).")
        var hosts: Int?

        @Option(name: .customLong("docker-hosts"), help: "How many of the first hosts run dockerd (default 2, at most --hosts).")
        var dockerHosts: Int?

        func validate() throws {
            if let hosts, !(1...LabScript.maxHosts).contains(hosts) {
                throw ValidationError("--hosts must be between 1 and \(LabScript.maxHosts), not \(hosts).")
            }
            if let dockerHosts, dockerHosts < 0 {
                throw ValidationError("--docker-hosts must not be negative.")
            }
        }

        var scriptArguments: [String] {
            var arguments = ["up"]
            if let hosts { arguments += ["--hosts", String(hosts)] }
            if let dockerHosts { arguments += ["--docker-hosts", String(dockerHosts)] }
            return arguments
        }

        func run() throws { try LabScript.replaceProcess(with: scriptArguments) }
    }

    /// `migplan lab down [--purge] [--force]`
    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop and remove everything the lab made (keys stay unless --purge)."
        )

        @Flag(name: .long, help: "Also delete the lab's state directory (.lab), keys included.")
        var purge = false

        @Flag(name: .long, help: "Also remove lab parts that another lab directory owns.")
        var force = false

        var scriptArguments: [String] { ["down"] + (purge ? ["--purge"] : []) + (force ? ["--force"] : []) }

        func run() throws { try LabScript.replaceProcess(with: scriptArguments) }
    }

    /// `migplan lab status`
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Report every part of the lab; exit 0 only if all are healthy."
        )

        var scriptArguments: [String] { ["status"] }

        func run() throws { try LabScript.replaceProcess(with: scriptArguments) }
    }

    /// `migplan lab exec instanceN -- CMD...`
    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command inside a lab host's namespaces (no SSH; for debugging and tests).",
            discussion: "Example: migplan lab exec instance1 -- docker ps"
        )

        @Argument(help: "The host: instance1...instance\(LabScript.maxHosts).")
        var host: String

        @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (default: bash).")
        var command: [String] = []

        func validate() throws {
            guard LabScript.hostNumber(host) != nil else {
                throw ValidationError("unknown lab host '\(host)': expected instance1...instance\(LabScript.maxHosts).")
            }
        }

        var scriptArguments: [String] {
            let rest = command.first == "--" ? Array(command.dropFirst()) : command
            return ["exec", host, "--"] + rest
        }

        func run() throws { try LabScript.replaceProcess(with: scriptArguments) }
    }
}

/// Finding and running `scripts/lab`.
enum LabScript {
    static let maxHosts = 8

    /// The N of `instanceN` (1...maxHosts), or nil.
    static func hostNumber(_ name: String) -> Int? {
        guard name.hasPrefix("instance"), let number = Int(name.dropFirst("instance".count)),
              String(number) == name.dropFirst("instance".count), (1...maxHosts).contains(number)
        else { return nil }
        return number
    }

    /// Where `scripts/lab` is: `$MIGPLAN_SCRIPTS_DIR/lab` if that variable is set; else
    /// `scripts/lab` in the nearest ancestor of the executable's directory that has one; else
    /// the same search from the current directory.
    static func locate(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        executablePath: String? = LabScript.currentExecutablePath(),
        currentDirectory: String = FileManager.default.currentDirectoryPath,
        isExecutable: (String) -> Bool = { FileManager.default.isExecutableFile(atPath: $0) }
    ) -> String? {
        if let dir = environment["MIGPLAN_SCRIPTS_DIR"], !dir.isEmpty {
            let path = URL(fileURLWithPath: dir).appendingPathComponent("lab").path
            return isExecutable(path) ? path : nil
        }
        var starts: [URL] = []
        if let executablePath {
            starts.append(URL(fileURLWithPath: executablePath).deletingLastPathComponent())
        }
        starts.append(URL(fileURLWithPath: currentDirectory))
        for start in starts {
            var dir = start.standardizedFileURL
            while true {
                let candidate = dir.appendingPathComponent("scripts/lab").path
                if isExecutable(candidate) { return candidate }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return nil
    }

    /// The running executable, symlinks resolved (`/proc/self/exe` on Linux).
    static func currentExecutablePath() -> String? {
        if let resolved = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            return resolved
        }
        return CommandLine.arguments.first.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path }
    }

    /// Replaces this process with `scripts/lab ARGUMENTS...`; returns only by throwing.
    static func replaceProcess(with arguments: [String]) throws {
        guard let script = locate() else {
            FileHandle.standardError.write(Data("""
                migplan lab: cannot find scripts/lab (looked beside the migplan executable and in \
                the current directory's checkout); set MIGPLAN_SCRIPTS_DIR to the scripts directory.

                """.utf8))
            throw ExitCode.failure
        }
        fflush(nil)  // all C streams: nothing buffered may be lost at exec
        let argv = [script] + arguments
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArguments.append(nil)
        execv(script, cArguments)
        let reason = String(cString: strerror(errno))
        for pointer in cArguments { free(pointer) }
        FileHandle.standardError.write(Data("migplan lab: cannot run \(script): \(reason)\n".utf8))
        throw ExitCode.failure
    }
}
