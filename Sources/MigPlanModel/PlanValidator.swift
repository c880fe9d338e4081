// Semantic checks of a decoded plan, and checks of the controller's local files.

import Foundation
import MigPlanBasics

/// When to check the controller's local files (keys, known_hosts, CA certificate).
public enum FileCheckMode: Sendable, Hashable {
    /// Never (pure plan checks).
    case never
    /// For files that exist here; missing files are reported as skipped (the default: CI has no keys).
    case whenPresent
    /// Always; a missing file is an error (`--check-files`).
    case always
}

/// The result of checking one plan file.
public struct ValidationReport: Sendable {
    public var file: String
    public var plan: Plan?
    /// Sorted for output.
    public var diagnostics: [Diagnostic]
    /// Human descriptions of the file checks that were skipped (also present as notes).
    public var skippedFileChecks: [String]

    public var isValid: Bool { plan != nil && !diagnostics.containsErrors }
}

public struct PlanValidator: Sendable {
    public var catalog: AlgorithmCatalog
    public var fileChecks: FileCheckMode

    public init(catalog: AlgorithmCatalog = .libssh2_1_10, fileChecks: FileCheckMode = .whenPresent) {
        self.catalog = catalog
        self.fileChecks = fileChecks
    }

    /// Loads and validates one file: schema-level and semantic checks, then file checks.
    public func check(file: String, options: PlanLoadOptions = PlanLoadOptions()) -> ValidationReport {
        let loaded = PlanLoader.load(file: file, options: options)
        var diagnostics = loaded.diagnostics
        var skipped: [String] = []
        if let plan = loaded.plan {
            diagnostics += validate(plan)
            let files = checkFiles(plan)
            diagnostics += files.diagnostics
            skipped = files.skipped
        }
        return ValidationReport(file: file, plan: loaded.plan, diagnostics: diagnostics.sortedForOutput(), skippedFileChecks: skipped)
    }

    /// Semantic checks (no file access).
    public func validate(_ plan: Plan) -> [Diagnostic] {
        var out: [Diagnostic] = []
        func error(_ mark: Mark, _ path: String, _ message: String) { out.append(Diagnostic(.error, at: mark, path: path, message)) }
        func warning(_ mark: Mark, _ path: String, _ message: String) { out.append(Diagnostic(.warning, at: mark, path: path, message)) }
        func list(_ names: [String]) -> String { names.isEmpty ? "none" : names.joined(separator: ", ") }

        // Algorithms: unknown to libssh2, weak.
        for kind in AlgorithmKind.allCases {
            for (index, name) in plan.ssh.algorithms(kind).enumerated() {
                let path = "ssh.\(kind.planField)[\(index)]"
                let mark = plan.ssh.marks["\(kind.planField)[\(index)]"]
                let what = Self.kindDescription(kind)
                if let reason = WeakAlgorithms.reason(for: name) {
                    if plan.ssh.allowWeakAlgorithms {
                        warning(mark, path, "weak \(what) \"\(name)\" allowed by ssh.allowWeakAlgorithms: \(reason)")
                    } else {
                        error(mark, path, "weak \(what) \"\(name)\" refused: \(reason); choose a strong one (set ssh.allowWeakAlgorithms: true to override, not recommended)")
                        continue
                    }
                }
                if !catalog.contains(name, kind: kind) {
                    error(mark, path, "unknown \(what) \"\(name)\": \(catalog.source) supports \(list(catalog.names[kind] ?? []))")
                }
            }
        }

        // Hosts: key references, duplicate addresses.
        var seenAddresses: [String: String] = [:]
        for host in plan.hosts {
            if !host.key.isEmpty, plan.key(named: host.key) == nil {
                error(host.marks["key"], "hosts.\(host.name).key", "unknown key \"\(host.key)\"; defined keys: \(list(plan.keys.map(\.name)))")
            }
            if !host.address.isEmpty {
                let endpoint = host.knownHostsName
                if let other = seenAddresses[endpoint] {
                    warning(host.marks["address"], "hosts.\(host.name).address",
                            "host \"\(host.name)\" has the same address and port as host \"\(other)\" (\(endpoint))")
                } else {
                    seenAddresses[endpoint] = host.name
                }
            }
        }

        // Containers: replica names must not collide with other containers.
        var instanceOwner: [String: Container] = [:]
        for container in plan.containers where container.replicas > 1 {
            for name in container.replicaNames { instanceOwner[name] = container }
        }
        for container in plan.containers {
            if container.runtime == .docker, container.replicas == 1, container.name.unicodeScalars.count < 2 {
                error(container.mark, "containers.\(container.name)",
                      "docker container names need at least 2 characters; \"\(container.name)\" would be refused by dockerd")
            }
            if let owner = instanceOwner[container.name], owner.name != container.name {
                error(container.mark, "containers.\(container.name)",
                      "duplicate name: \"\(container.name)\" is also the name of a replica of container \"\(owner.name)\" (replicas: \(owner.replicas))")
            }
        }

        // Migrations.
        var migrationNames: [String: Int] = [:]
        var movedBy: [String: (migration: String, index: Int)] = [:]
        for (index, migration) in plan.migrations.enumerated() {
            let path = "migrations[\(index)]"
            if !migration.name.isEmpty {
                if let first = migrationNames[migration.name] {
                    error(migration.marks["name"], "\(path).name",
                          "duplicate migration name \"\(migration.name)\" (also migrations[\(first)])")
                } else {
                    migrationNames[migration.name] = index
                }
            }
            let source = plan.host(named: migration.from)
            let destination = plan.host(named: migration.to)
            if !migration.from.isEmpty, source == nil {
                error(migration.marks["from"], "\(path).from", "unknown host \"\(migration.from)\"; defined hosts: \(list(plan.hosts.map(\.name)))")
            }
            if !migration.to.isEmpty, destination == nil {
                error(migration.marks["to"], "\(path).to", "unknown host \"\(migration.to)\"; defined hosts: \(list(plan.hosts.map(\.name)))")
            }
            if !migration.from.isEmpty, migration.from == migration.to {
                error(migration.marks["to"], "\(path).to", "source and destination are the same host \"\(migration.to)\"")
            } else if let source, let destination, source.knownHostsName == destination.knownHostsName, !source.address.isEmpty {
                error(migration.marks["to"], "\(path).to",
                      "hosts \"\(source.name)\" and \"\(destination.name)\" are the same machine (\(source.knownHostsName))")
            } else if let source, let destination, !source.address.isEmpty,
                      source.address.lowercased() == destination.address.lowercased() {
                warning(migration.marks["to"], "\(path).to",
                        "hosts \"\(source.name)\" and \"\(destination.name)\" have the same address \(source.address) (ports \(source.port) and \(destination.port)): probably the same machine, so the container would not move")
            }
            for (itemIndex, name) in migration.containers.enumerated() {
                let itemPath = "\(path).containers[\(itemIndex)]"
                let itemMark = migration.marks["containers[\(itemIndex)]"]
                guard let container = plan.container(named: name) else {
                    error(itemMark, itemPath, "unknown container \"\(name)\"; defined containers: \(list(plan.containers.map(\.name)))")
                    continue
                }
                if let first = movedBy[name] {
                    error(itemMark, itemPath,
                          "container \"\(name)\" is in two migrations: already moved by \"\(first.migration)\" (migrations[\(first.index)])")
                } else {
                    movedBy[name] = (migration.name, index)
                }
                switch migration.flow {
                case .stateless:
                    if container.stateful {
                        error(itemMark, itemPath,
                              "container \"\(name)\" is stateful but the migration's flow is stateless: its state would be lost (use flow: stateful)")
                    }
                case .stateful:
                    if !container.runtime.canCheckpoint {
                        error(itemMark, itemPath, "container \"\(name)\" uses runtime \(container.runtime.rawValue), which cannot checkpoint")
                    }
                    if migration.transfer.method == .pageServer, container.runtime == .docker {
                        error(itemMark, itemPath,
                              "container \"\(name)\" uses runtime docker: transfer method page-server needs runc (Docker's checkpoint cannot send pages to a page server); use method: archive")
                    }
                    if !container.stateful {
                        warning(itemMark, itemPath,
                                "container \"\(name)\" is declared stateful: false but is moved by the stateful flow (checkpoint/restore)")
                    }
                }
            }
            if migration.flow.isStateful {
                for (field, host) in [("from", source), ("to", destination)] {
                    guard let host, !host.runtime.checkpoint else { continue }
                    error(migration.marks[field], "\(path).\(field)",
                          "stateful migration \"\(migration.name)\" needs checkpoint/restore, but host \"\(host.name)\" cannot checkpoint (hosts.\(host.name).runtime.checkpoint: false)")
                }
            } else if migration.marks.byField["transfer"] != nil {
                warning(migration.marks["transfer"], "\(path).transfer", "transfer options are ignored by the stateless flow (nothing is transferred)")
            }
            if migration.retry.maxBackoff < migration.retry.initialBackoff {
                error(migration.retry.marks["maxBackoff"], "\(path).retry.maxBackoff",
                      "maxBackoff (\(formatDuration(migration.retry.maxBackoff))) is shorter than initialBackoff (\(formatDuration(migration.retry.initialBackoff)))")
            }
        }

        // Journal.
        if let journal = plan.journal, !journal.sslmode.verifiesServer {
            warning(journal.marks["sslmode"], "journal.sslmode",
                    "sslmode \"\(journal.sslmode.rawValue)\" does not verify the server's certificate; use verify-ca or verify-full")
        }
        return out
    }

    /// A path or address as one word of a command the user may copy: single-quoted when needed;
    /// a path written with `${VAR}` in double quotes so the shell expands the variable as migplan did.
    static func shellWord(_ text: String) -> String {
        if text.contains("${"), !text.contains(where: { "\"`\\".contains($0) }),
           !text.replacingOccurrences(of: "${", with: "").contains("$") {
            return "\"" + text + "\""
        }
        return ShellQuote.quote(text)
    }

    static func kindDescription(_ kind: AlgorithmKind) -> String {
        switch kind {
        case .cipher: "cipher"
        case .kex: "key exchange"
        case .mac: "MAC"
        case .hostKey: "host key type"
        }
    }

    // MARK: - File checks

    /// Checks of key files, known_hosts and the journal CA file, per `fileChecks`.
    public func checkFiles(_ plan: Plan) -> (diagnostics: [Diagnostic], skipped: [String]) {
        guard fileChecks != .never else { return ([], []) }
        var out: [Diagnostic] = []
        var skipped: [String] = []
        let manager = FileManager.default

        // Paths appear in messages as `shown` (`${VAR}` unexpanded: its value may be a secret).
        /// True when the file should be checked further.
        func present(_ path: String, shown: String, what: String, mark: Mark, fieldPath: String) -> Bool {
            guard !path.isEmpty else { return false }
            if manager.fileExists(atPath: path) { return true }
            if fileChecks == .always {
                out.append(Diagnostic(.error, at: mark, path: fieldPath, "\(what) \(shown) does not exist"))
            } else {
                let text = "\(what) \(shown) is not present here: its checks were skipped (--check-files requires it)"
                skipped.append(text)
                out.append(Diagnostic(.note, at: mark, path: fieldPath, text))
            }
            return false
        }
        func readable(_ path: String, shown: String, what: String, mark: Mark, fieldPath: String) -> Bool {
            if manager.isReadableFile(atPath: path) { return true }
            out.append(Diagnostic(.error, at: mark, path: fieldPath, "\(what) \(shown) is not readable"))
            return false
        }

        for key in plan.keys {
            let mark = key.marks["path"]
            let fieldPath = "keys.\(key.name).path"
            let shown = key.pathForDisplay ?? key.path
            guard present(key.path, shown: shown, what: "key file", mark: mark, fieldPath: fieldPath),
                  readable(key.path, shown: shown, what: "key file", mark: mark, fieldPath: fieldPath) else { continue }
            // stat(2) follows symbolic links: the mode and owner of the key itself, not of a link to it.
            var info = stat()
            guard stat(key.path, &info) == 0 else { continue }
            let permissions = Int(info.st_mode) & 0o777
            if permissions & 0o077 != 0 {
                out.append(Diagnostic(.error, at: mark, path: fieldPath,
                                      "key file \(shown) is accessible by group or others (mode \(String(permissions, radix: 8))); run chmod 600 \(Self.shellWord(shown))"))
            }
            let user = geteuid()
            if info.st_uid != user {
                out.append(Diagnostic(.error, at: mark, path: fieldPath,
                                      "key file \(shown) is owned by uid \(info.st_uid), not by the user running migplan (uid \(user)); whoever owns it can replace the key: run chown \(user) \(Self.shellWord(shown))"))
            }
        }

        let knownHosts = plan.ssh.knownHosts
        let knownHostsShown = plan.ssh.knownHostsForDisplay ?? knownHosts
        let knownHostsMark = plan.ssh.marks["knownHosts"]
        if present(knownHosts, shown: knownHostsShown, what: "known_hosts file", mark: knownHostsMark, fieldPath: "ssh.knownHosts"),
           readable(knownHosts, shown: knownHostsShown, what: "known_hosts file", mark: knownHostsMark, fieldPath: "ssh.knownHosts"),
           let text = try? String(contentsOfFile: knownHosts, encoding: .utf8) {
            let file = KnownHosts.parse(text)
            for host in plan.hosts where !host.address.isEmpty {
                let name = host.knownHostsName
                let types = file.entries(for: name).map(\.keyType)
                let fieldPath = "hosts.\(host.name).address"
                if types.isEmpty, file.onlyRevoked(for: name) {
                    out.append(Diagnostic(.error, at: host.marks["address"], path: fieldPath,
                                          "every key \(knownHostsShown) lists for \(name) is marked @revoked; verify the host's new key and add it"))
                } else if types.isEmpty {
                    let keyscan = host.port == 22 ? "ssh-keyscan -t ed25519 \(Self.shellWord(host.address))"
                        : "ssh-keyscan -p \(host.port) -t ed25519 \(Self.shellWord(host.address))"
                    out.append(Diagnostic(.error, at: host.marks["address"], path: fieldPath,
                                          "\(knownHostsShown) has no entry for \(name); verify the host's key and add it (e.g. \(keyscan) >> \(Self.shellWord(knownHostsShown)))"))
                } else if !types.contains(where: plan.ssh.hostKeyTypes.contains) {
                    out.append(Diagnostic(.error, at: host.marks["address"], path: fieldPath,
                                          "\(knownHostsShown) lists \(name) only with \(types.joined(separator: ", ")), none of ssh.hostKeyTypes (\(plan.ssh.hostKeyTypes.joined(separator: ", ")))"))
                }
            }
        }

        if let journal = plan.journal, let ca = journal.sslrootcert {
            let mark = journal.marks["sslrootcert"]
            let shown = journal.sslrootcertForDisplay ?? ca
            if present(ca, shown: shown, what: "CA certificate", mark: mark, fieldPath: "journal.sslrootcert") {
                _ = readable(ca, shown: shown, what: "CA certificate", mark: mark, fieldPath: "journal.sslrootcert")
            }
        }
        return (out, skipped)
    }
}

/// A small known_hosts reader: host patterns (with `*`, `?` and `!` negation, as OpenSSH matches
/// them), key type and key per line; `@revoked` keys are collected apart and `@cert-authority`
/// lines are ignored (a CA key is not the host's key; migplan does not use host certificates).
enum KnownHosts {
    struct Entry {
        var patterns: [String]
        var keyType: String
        var key: String
        var hashed: Bool
    }

    struct File {
        var entries: [Entry]
        var revoked: [Entry]

        /// Entries for `name` (`addr` or `[addr]:port`) whose key is not revoked.
        func entries(for name: String) -> [Entry] {
            let revokedKeys = Set(revoked.map(\.key))
            return entries.filter { KnownHosts.matches(name, $0.patterns) && !revokedKeys.contains($0.key) }
        }

        /// True when some entry lists `name` but all of its keys are revoked.
        func onlyRevoked(for name: String) -> Bool {
            let revokedKeys = Set(revoked.map(\.key))
            let all = entries.filter { KnownHosts.matches(name, $0.patterns) }
            return !all.isEmpty && all.allSatisfy { revokedKeys.contains($0.key) }
        }

        var hasHashedEntries: Bool { entries.contains(where: \.hashed) }
    }

    static func parse(_ text: String) -> File {
        var file = File(entries: [], revoked: [])
        for line in text.split(whereSeparator: \.isNewline) {
            var fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let first = fields.first, !first.hasPrefix("#") else { continue }
            var marker: String?
            if first.hasPrefix("@") {
                marker = first
                fields.removeFirst()
            }
            guard fields.count >= 3 else { continue }
            let entry = Entry(patterns: fields[0].split(separator: ",").map(String.init), keyType: fields[1],
                              key: fields[2], hashed: fields[0].hasPrefix("|1|"))
            switch marker {
            case nil: file.entries.append(entry)
            case "@revoked": file.revoked.append(entry)
            default: continue // @cert-authority and unknown markers
            }
        }
        return file
    }

    /// OpenSSH's rule: a negated pattern (`!pat`) that matches excludes the line; otherwise any
    /// matching pattern includes it. Patterns compare case-insensitively.
    static func matches(_ name: String, _ patterns: [String]) -> Bool {
        if patterns.count == 1, let hashed = patterns.first, hashed.hasPrefix("|1|") {
            return hashedMatches(name, hashed)
        }
        var matched = false
        let lowered = name.lowercased()
        for pattern in patterns {
            if pattern.hasPrefix("!") {
                if wildcard(Array(pattern.dropFirst().lowercased()), Array(lowered)) { return false }
            } else if wildcard(Array(pattern.lowercased()), Array(lowered)) {
                matched = true
            }
        }
        return matched
    }

    /// A hashed entry `|1|SALT|HASH` (base64) names `name` when HASH = HMAC-SHA1(SALT, name), as
    /// OpenSSH writes them (`HashKnownHosts yes`, Debian's default).
    static func hashedMatches(_ name: String, _ entry: String) -> Bool {
        let parts = entry.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[1] == "1",
              let salt = Data(base64Encoded: String(parts[2])), let hash = Data(base64Encoded: String(parts[3])) else { return false }
        return hmacSHA1(key: [UInt8](salt), message: Array(name.utf8)) == [UInt8](hash)
    }

    /// `*` (any run) and `?` (one character) matching.
    static func wildcard(_ pattern: [Character], _ text: [Character]) -> Bool {
        var p = 0, t = 0
        var star: Int?, mark = 0
        while t < text.count {
            if p < pattern.count, pattern[p] == "?" || pattern[p] == text[t] {
                p += 1
                t += 1
            } else if p < pattern.count, pattern[p] == "*" {
                star = p
                mark = t
                p += 1
            } else if let s = star {
                p = s + 1
                mark += 1
                t = mark
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}
