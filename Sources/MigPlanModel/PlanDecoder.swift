// Turns a composed YAML tree into a `Plan`, reporting every schema-level problem (unknown or
// missing fields, wrong types, values out of range) as a diagnostic. It keeps going after a
// problem: an invalid field takes its default so later checks still run and all errors of a
// file are reported. The rules here mirror `schemas/migplan-v1.schema.json` one for one.

/// Names of hosts, keys, containers, migrations and the plan: letters, digits, `_`, `.`, `-`.
let namePattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(?!\\n)$"

/// The host name step locations use for the machine running migplan; plans cannot define it.
public let reservedHostName = "controller"

func isValidName(_ name: String) -> Bool {
    guard (1...63).contains(name.utf8.count), let first = name.unicodeScalars.first, isAlnum(first) else { return false }
    return name.unicodeScalars.allSatisfy { isAlnum($0) || $0 == "_" || $0 == "." || $0 == "-" }
}

private func isAlnum(_ scalar: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
}

/// Parses `500ms`, `10s`, `2m`, `1h` (the schema's duration pattern).
public func parseDuration(_ text: String) -> Duration? {
    let digits = text.prefix { ("0"..."9").contains($0) }
    guard !digits.isEmpty, digits.count <= 9, let value = Int64(digits) else { return nil }
    switch text.dropFirst(digits.count) {
    case "ms": return .milliseconds(value)
    case "s": return .seconds(value)
    case "m": return .seconds(value * 60)
    case "h": return .seconds(value * 3600)
    default: return nil
    }
}

/// Formats a duration the way plans write it (`10s`, `500ms`).
public func formatDuration(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    if attoseconds == 0 {
        if seconds % 3600 == 0, seconds != 0 { return "\(seconds / 3600)h" }
        if seconds % 60 == 0, seconds != 0 { return "\(seconds / 60)m" }
        return "\(seconds)s"
    }
    return "\(seconds * 1000 + attoseconds / 1_000_000_000_000_000)ms"
}

struct PlanDecoder {
    let file: String
    let directory: String
    let expander: PathExpander
    var diagnostics: [Diagnostic] = []

    init(file: String, directory: String, expander: PathExpander) {
        self.file = file
        self.directory = directory
        self.expander = expander
    }

    // MARK: helpers

    func mark(_ node: YNode) -> Mark { Mark(file: file, line: node.line, column: node.column) }
    func mark(_ pair: YPair) -> Mark { Mark(file: file, line: pair.keyLine, column: pair.keyColumn) }

    mutating func error(_ node: YNode, _ path: String, _ message: String) {
        diagnostics.append(Diagnostic(.error, at: mark(node), path: path, message))
    }

    static func join(_ path: String, _ field: String) -> String { path.isEmpty ? field : "\(path).\(field)" }

    /// The pairs of a mapping after checking its fields against `allowed` and `required`.
    mutating func fields(_ node: YNode, _ path: String, allowed: [String], required: [String]) -> [String: YPair]? {
        guard case .mapping(let pairs) = node.kind else {
            error(node, path, "expected a mapping, found \(node.kindName)")
            return nil
        }
        var result: [String: YPair] = [:]
        for pair in pairs {
            if allowed.contains(pair.key) {
                result[pair.key] = pair
            } else {
                diagnostics.append(Diagnostic(.error, at: mark(pair), path: Self.join(path, pair.key),
                                              "unknown field \"\(pair.key)\"; expected one of: \(allowed.joined(separator: ", "))"))
            }
        }
        for name in required where result[name] == nil {
            error(node, path, "missing required field \"\(name)\"")
        }
        return result
    }

    /// A mapping whose keys are names (hosts, keys, containers).
    mutating func namedEntries(_ node: YNode, _ path: String, what: String) -> [YPair] {
        guard case .mapping(let pairs) = node.kind else {
            error(node, path, "expected a mapping of \(what) names to \(what) settings, found \(node.kindName)")
            return []
        }
        if pairs.isEmpty { error(node, path, "at least one \(what) is required") }
        for pair in pairs where !isValidName(pair.key) {
            diagnostics.append(Diagnostic(.error, at: mark(pair), path: Self.join(path, pair.key),
                                          "invalid \(what) name \"\(pair.key)\": use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit"))
        }
        return pairs
    }

    func scalar(_ node: YNode) -> (String, YNode.ScalarStyle, String?)? {
        if case .scalar(let value, let style, let tag) = node.kind { return (value, style, tag) }
        return nil
    }

    /// What a plain scalar resolves to (YAML 1.1 as PyYAML reads it, so the schema check agrees).
    enum Resolved { case null, bool(Bool), int(Int), float, string(String) }

    func resolve(_ node: YNode) -> Resolved? {
        guard let (value, style, tag) = scalar(node) else { return nil }
        if let tag {
            switch tag {
            case "tag:yaml.org,2002:str": return .string(value)
            case "tag:yaml.org,2002:int": return Int(value).map(Resolved.int) ?? .string(value)
            default: return .string(value)
            }
        }
        guard style == .plain else { return .string(value) }
        switch value {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return .bool(true)
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return .bool(false)
        default: break
        }
        var digits = Substring(value)
        if digits.first == "-" || digits.first == "+" { digits = digits.dropFirst() }
        if !digits.isEmpty, digits.allSatisfy({ ("0"..."9").contains($0) }) {
            return Int(value).map(Resolved.int) ?? .float
        }
        if Double(value) != nil || [".inf", ".Inf", ".INF", "-.inf", ".nan", ".NaN", ".NAN"].contains(value) { return .float }
        return .string(value)
    }

    func describe(_ resolved: Resolved?, _ node: YNode) -> String {
        switch resolved {
        case nil: node.kindName
        case .null: "null"
        case .bool: "a boolean"
        case .int: "an integer"
        case .float: "a number"
        case .string: "a string"
        }
    }

    mutating func string(_ node: YNode, _ path: String, pattern: StringRule = .any) -> String? {
        let resolved = resolve(node)
        guard case .string(let value) = resolved else {
            error(node, path, "expected a string, found \(describe(resolved, node))\(resolved.map { _ in "; quote it if you mean the text" } ?? "")")
            return nil
        }
        if let problem = pattern.problem(value) {
            error(node, path, problem)
            return nil
        }
        return value
    }

    mutating func int(_ node: YNode, _ path: String, range: ClosedRange<Int>) -> Int? {
        let resolved = resolve(node)
        guard case .int(let value) = resolved else {
            error(node, path, "expected an integer, found \(describe(resolved, node))")
            return nil
        }
        guard range.contains(value) else {
            error(node, path, "\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return value
    }

    mutating func bool(_ node: YNode, _ path: String) -> Bool? {
        let resolved = resolve(node)
        guard case .bool(let value) = resolved else {
            error(node, path, "expected true or false, found \(describe(resolved, node))")
            return nil
        }
        return value
    }

    mutating func enumeration(_ node: YNode, _ path: String, _ allowed: [String]) -> String? {
        guard let value = string(node, path) else { return nil }
        guard allowed.contains(value) else {
            error(node, path, "\"\(value)\" is not one of: \(allowed.joined(separator: ", "))")
            return nil
        }
        return value
    }

    mutating func duration(_ node: YNode, _ path: String, allowZero: Bool, minimum: Duration? = nil) -> Duration? {
        guard let text = string(node, path) else { return nil }
        guard let duration = parseDuration(text) else {
            error(node, path, "\"\(text)\" is not a duration; write e.g. 500ms, 10s, 2m, 1h")
            return nil
        }
        if let minimum, duration < minimum {
            error(node, path, "must be at least \(formatDuration(minimum)) (shorter waits make a hot retry loop)")
            return nil
        }
        if !allowZero, duration == .zero {
            error(node, path, "must be longer than zero")
            return nil
        }
        return duration
    }

    /// A list of strings: non-empty, unique, each checked by `rule`. Item marks go into `marks`.
    mutating func stringList(_ node: YNode, _ path: String, field: String, rule: StringRule,
                             marks: inout [String: Mark]) -> [String]? {
        guard case .sequence(let items) = node.kind else {
            error(node, path, "expected a list, found \(node.kindName)")
            return nil
        }
        if items.isEmpty {
            error(node, path, "the list must not be empty")
            return nil
        }
        var values: [String] = []
        var ok = true
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let value = string(item, itemPath, pattern: rule) else { ok = false; continue }
            if values.contains(value) {
                error(item, itemPath, "\"\(value)\" is listed twice")
                ok = false
                continue
            }
            marks["\(field)[\(values.count)]"] = mark(item)
            values.append(value)
        }
        return ok ? values : nil
    }

    /// A controller-local path: resolved, and how diagnostics may show it (`${VAR}` unexpanded).
    mutating func localPath(_ node: YNode, _ path: String) -> (resolved: String, display: String)? {
        guard let raw = string(node, path, pattern: .nonEmpty) else { return nil }
        do {
            let resolved = try expander.expand(raw, relativeTo: directory)
            return (resolved, PathExpander.displayForm(written: raw, resolved: resolved))
        } catch {
            self.error(node, path, error.message)
            return nil
        }
    }

    // MARK: the plan

    mutating func decodePlan(_ root: YNode) -> Plan? {
        let rootFields = ["apiVersion", "name", "description", "ssh", "keys", "hosts", "journal", "containers", "migrations"]
        guard let f = fields(root, "", allowed: rootFields,
                             required: ["apiVersion", "name", "ssh", "keys", "hosts", "containers", "migrations"]) else {
            return nil
        }
        var marks = FieldMarks(node: mark(root))
        for (key, pair) in f { marks.byField[key] = mark(pair.value) }

        var apiVersion = Plan.apiVersionV1
        if let node = f["apiVersion"]?.value, let value = string(node, "apiVersion") {
            if value != Plan.apiVersionV1 {
                error(node, "apiVersion", "unsupported apiVersion \"\(value)\"; this migplan reads \"\(Plan.apiVersionV1)\"")
            }
            apiVersion = value
        }
        var name = ""
        if let node = f["name"]?.value, let value = string(node, "name", pattern: .name) { name = value }
        var description: String?
        if let node = f["description"]?.value { description = string(node, "description") }

        let ssh = f["ssh"].map { decodeSSH($0.value) } ?? SSHSettings(knownHosts: "", marks: marks)
        let keys = f["keys"].map { decodeKeys($0.value) } ?? []
        let hosts = f["hosts"].map { decodeHosts($0.value) } ?? []
        let journal = f["journal"].flatMap { decodeJournal($0.value) }
        let containers = f["containers"].map { decodeContainers($0.value) } ?? []
        let migrations = f["migrations"].map { decodeMigrations($0.value, containers: containers) } ?? []
        return Plan(file: file, directory: directory, apiVersion: apiVersion, name: name, description: description,
                    ssh: ssh, keys: keys, hosts: hosts, journal: journal, containers: containers,
                    migrations: migrations, marks: marks)
    }

    mutating func decodeSSH(_ node: YNode) -> SSHSettings {
        let path = "ssh"
        var marks = FieldMarks(node: mark(node))
        var ssh = SSHSettings(knownHosts: "", marks: marks)
        guard let f = fields(node, path, allowed: ["ciphers", "kex", "macs", "hostKeyTypes", "knownHosts",
                                                   "connectTimeout", "keepalive", "allowWeakAlgorithms"],
                             required: ["knownHosts"]) else { return ssh }
        for (key, pair) in f { marks.byField[key] = mark(pair.value) }
        for kind in AlgorithmKind.allCases {
            let field = kind.planField
            guard let value = f[field]?.value else { continue }
            if let list = stringList(value, "ssh.\(field)", field: field, rule: .algorithm, marks: &marks.byField) {
                switch kind {
                case .cipher: ssh.ciphers = list
                case .kex: ssh.kex = list
                case .mac: ssh.macs = list
                case .hostKey: ssh.hostKeyTypes = list
                }
            }
        }
        if let value = f["knownHosts"]?.value, let resolved = localPath(value, "ssh.knownHosts") {
            ssh.knownHosts = resolved.resolved
            ssh.knownHostsForDisplay = resolved.display
        }
        if let value = f["connectTimeout"]?.value, let d = duration(value, "ssh.connectTimeout", allowZero: false) { ssh.connectTimeout = d }
        if let value = f["keepalive"]?.value, let d = duration(value, "ssh.keepalive", allowZero: true) { ssh.keepalive = d }
        if let value = f["allowWeakAlgorithms"]?.value, let b = bool(value, "ssh.allowWeakAlgorithms") { ssh.allowWeakAlgorithms = b }
        ssh.marks = marks
        return ssh
    }

    mutating func decodeKeys(_ node: YNode) -> [Key] {
        namedEntries(node, "keys", what: "key").map { pair in
            let path = "keys.\(pair.key)"
            var marks = FieldMarks(node: mark(pair))
            var key = Key(name: pair.key, path: "", marks: marks)
            guard let f = fields(pair.value, path, allowed: ["path", "passphraseEnv"], required: ["path"]) else { return key }
            for (k, p) in f { marks.byField[k] = mark(p.value) }
            if let value = f["path"]?.value, let resolved = localPath(value, "\(path).path") {
                key.path = resolved.resolved
                key.pathForDisplay = resolved.display
            }
            if let value = f["passphraseEnv"]?.value { key.passphraseEnv = string(value, "\(path).passphraseEnv", pattern: .environmentName) }
            key.marks = marks
            return key
        }
    }

    mutating func decodeHosts(_ node: YNode) -> [Host] {
        namedEntries(node, "hosts", what: "host").map { pair in
            let path = "hosts.\(pair.key)"
            if pair.key == reservedHostName {
                diagnostics.append(Diagnostic(.error, at: mark(pair), path: path,
                                              "the host name \"\(reservedHostName)\" is reserved for the machine running migplan (step locations use it); choose another name"))
            }
            var marks = FieldMarks(node: mark(pair))
            var host = Host(name: pair.key, address: "", key: "", marks: marks)
            guard let f = fields(pair.value, path, allowed: ["address", "port", "user", "key", "runtime", "transferKeysFile"],
                                 required: ["address", "key"]) else { return host }
            for (k, p) in f { marks.byField[k] = mark(p.value) }
            if let value = f["address"]?.value, let s = string(value, "\(path).address", pattern: .address) { host.address = s }
            if let value = f["port"]?.value, let port = int(value, "\(path).port", range: 1...65535) { host.port = port }
            if let value = f["user"]?.value, let user = string(value, "\(path).user", pattern: .user) { host.user = user }
            if let value = f["key"]?.value, let key = string(value, "\(path).key", pattern: .name) { host.key = key }
            if let value = f["transferKeysFile"]?.value {
                host.transferKeysFile = string(value, "\(path).transferKeysFile", pattern: .authorizedKeysFile)
            }
            if let value = f["runtime"]?.value {
                let runtimePath = "\(path).runtime"
                if let r = fields(value, runtimePath, allowed: ["runcRoot", "dockerHost", "cgroupParent", "workDir", "checkpoint"], required: []) {
                    for (k, p) in r { marks.byField["runtime.\(k)"] = mark(p.value) }
                    if let v = r["runcRoot"]?.value { host.runtime.runcRoot = string(v, "\(runtimePath).runcRoot", pattern: .hostDirectory) }
                    if let v = r["dockerHost"]?.value { host.runtime.dockerHost = string(v, "\(runtimePath).dockerHost", pattern: .dockerHost) }
                    if let v = r["cgroupParent"]?.value { host.runtime.cgroupParent = string(v, "\(runtimePath).cgroupParent", pattern: .cgroupParent) }
                    if let v = r["workDir"]?.value, let s = string(v, "\(runtimePath).workDir", pattern: .hostDirectory) { host.runtime.workDir = s }
                    if let v = r["checkpoint"]?.value, let b = bool(v, "\(runtimePath).checkpoint") { host.runtime.checkpoint = b }
                }
            }
            host.marks = marks
            return host
        }
    }

    mutating func decodeJournal(_ node: YNode) -> Journal? {
        let path = "journal"
        var marks = FieldMarks(node: mark(node))
        guard let f = fields(node, path, allowed: ["host", "port", "dbname", "user", "sslmode", "sslrootcert",
                                                   "passwordEnv", "connectTimeout"],
                             required: ["host", "dbname", "user"]) else { return nil }
        for (k, p) in f { marks.byField[k] = mark(p.value) }
        var journal = Journal(host: "", dbname: "", user: "", marks: marks)
        if let v = f["host"]?.value, let s = string(v, "journal.host", pattern: .address) { journal.host = s }
        if let v = f["port"]?.value, let p = int(v, "journal.port", range: 1...65535) { journal.port = p }
        if let v = f["dbname"]?.value, let s = string(v, "journal.dbname", pattern: .nonEmpty) { journal.dbname = s }
        if let v = f["user"]?.value, let s = string(v, "journal.user", pattern: .nonEmpty) { journal.user = s }
        if let v = f["sslmode"]?.value, let s = enumeration(v, "journal.sslmode", SSLMode.allCases.map(\.rawValue)) {
            journal.sslmode = SSLMode(rawValue: s) ?? Journal.defaultSSLMode
        }
        if let v = f["sslrootcert"]?.value, let resolved = localPath(v, "journal.sslrootcert") {
            journal.sslrootcert = resolved.resolved
            journal.sslrootcertForDisplay = resolved.display
        }
        if let v = f["passwordEnv"]?.value { journal.passwordEnv = string(v, "journal.passwordEnv", pattern: .environmentName) }
        if let v = f["connectTimeout"]?.value, let d = duration(v, "journal.connectTimeout", allowZero: false) { journal.connectTimeout = d }
        journal.marks = marks
        return journal
    }

    mutating func decodeContainers(_ node: YNode) -> [Container] {
        namedEntries(node, "containers", what: "container").map { pair in
            let path = "containers.\(pair.key)"
            var marks = FieldMarks(node: mark(pair))
            let defaultBundle = HostRuntimePaths().defaultBundle(for: pair.key)
            var container = Container(name: pair.key, source: .runcBundle(path: defaultBundle), stateful: false, marks: marks)
            guard let f = fields(pair.value, path, allowed: ["runtime", "bundle", "image", "command", "stateful", "replicas"],
                                 required: ["runtime"]) else { return container }
            for (k, p) in f { marks.byField[k] = mark(p.value) }
            var runtime: Runtime?
            if let v = f["runtime"]?.value, let s = enumeration(v, "\(path).runtime", Runtime.allCases.map(\.rawValue)) {
                runtime = Runtime(rawValue: s)
            }
            var bundle: String?
            if let v = f["bundle"]?.value { bundle = string(v, "\(path).bundle", pattern: .hostDirectory) }
            var image: String?
            if let v = f["image"]?.value { image = string(v, "\(path).image", pattern: .image) }
            switch runtime {
            case .runc:
                if let imagePair = f["image"] {
                    error(imagePair.value, "\(path).image", "runc containers run from a bundle directory; \"image\" is for docker containers")
                }
                container.source = .runcBundle(path: bundle ?? defaultBundle)
            case .docker:
                if let bundlePair = f["bundle"] {
                    error(bundlePair.value, "\(path).bundle", "docker containers run from an image; \"bundle\" is for runc containers")
                }
                if f["image"] == nil {
                    error(pair.value, path, "missing required field \"image\" (docker containers need an image, e.g. migplan/face:latest)")
                }
                container.source = .dockerImage(image ?? "")
            case nil:
                break
            }
            if let v = f["command"]?.value {
                var ignored: [String: Mark] = [:]
                container.command = stringListAllowingRepeats(v, "\(path).command", marks: &ignored)
            }
            if let v = f["stateful"]?.value, let b = bool(v, "\(path).stateful") { container.stateful = b }
            if let v = f["replicas"]?.value, let n = int(v, "\(path).replicas", range: 1...64) { container.replicas = n }
            container.marks = marks
            return container
        }
    }

    /// A command: non-empty list of strings, repeats allowed.
    mutating func stringListAllowingRepeats(_ node: YNode, _ path: String, marks: inout [String: Mark]) -> [String]? {
        guard case .sequence(let items) = node.kind else {
            error(node, path, "expected a list of strings (the command and its arguments), found \(node.kindName)")
            return nil
        }
        if items.isEmpty {
            error(node, path, "the list must not be empty (leave the field out to use the default command)")
            return nil
        }
        var values: [String] = []
        for (index, item) in items.enumerated() {
            guard let value = string(item, "\(path)[\(index)]") else { return nil }
            values.append(value)
        }
        return values
    }

    mutating func decodeMigrations(_ node: YNode, containers: [Container]) -> [Migration] {
        guard case .sequence(let items) = node.kind else {
            error(node, "migrations", "expected a list of migrations, found \(node.kindName)")
            return []
        }
        if items.isEmpty { error(node, "migrations", "at least one migration is required") }
        return items.enumerated().compactMap { index, item in decodeMigration(item, index: index, containers: containers) }
    }

    mutating func decodeMigration(_ node: YNode, index: Int, containers: [Container]) -> Migration? {
        let path = "migrations[\(index)]"
        var marks = FieldMarks(node: mark(node))
        guard let f = fields(node, path, allowed: ["name", "containers", "from", "to", "flow", "order", "transfer",
                                                   "retry", "onFailure"],
                             required: ["name", "containers", "from", "to"]) else { return nil }
        for (k, p) in f { marks.byField[k] = mark(p.value) }
        var name = ""
        if let v = f["name"]?.value, let s = string(v, "\(path).name", pattern: .name) { name = s }
        var names: [String] = []
        if let v = f["containers"]?.value,
           let list = stringList(v, "\(path).containers", field: "containers", rule: .name, marks: &marks.byField) {
            names = list
        }
        var from = ""
        if let v = f["from"]?.value, let s = string(v, "\(path).from", pattern: .name) { from = s }
        var to = ""
        if let v = f["to"]?.value, let s = string(v, "\(path).to", pattern: .name) { to = s }

        var flowName: String?
        if let v = f["flow"]?.value { flowName = enumeration(v, "\(path).flow", ["stateful", "stateless"]) }
        var order = StatelessOrder.stopFirst
        if let v = f["order"]?.value {
            if let s = enumeration(v, "\(path).order", StatelessOrder.allCases.map(\.rawValue)) {
                order = StatelessOrder(rawValue: s) ?? .stopFirst
            }
            if flowName == "stateful" {
                error(v, "\(path).order", "\"order\" applies to the stateless flow only; the stateful flow always checkpoints, transfers, then restores")
            }
        }
        let flow: Flow
        switch flowName {
        case "stateful": flow = .stateful
        case "stateless": flow = .stateless(order: order)
        default:
            // Default: stateful when any container of the migration is stateful (and no order was given).
            let anyStateful = names.contains { n in containers.first { $0.name == n }?.stateful == true }
            flow = anyStateful && f["order"] == nil ? .stateful : .stateless(order: order)
        }

        var transfer = TransferOptions(marks: FieldMarks(node: mark(node)))
        if let v = f["transfer"]?.value { transfer = decodeTransfer(v, "\(path).transfer") }
        var retry = RetryPolicy(marks: FieldMarks(node: mark(node)))
        if let v = f["retry"]?.value { retry = decodeRetry(v, "\(path).retry") }
        var onFailure = FailurePolicy.rollback
        if let v = f["onFailure"]?.value, let s = enumeration(v, "\(path).onFailure", FailurePolicy.allCases.map(\.rawValue)) {
            onFailure = FailurePolicy(rawValue: s) ?? .rollback
        }
        return Migration(name: name, containers: names, from: from, to: to, flow: flow, transfer: transfer,
                         retry: retry, onFailure: onFailure, marks: marks)
    }

    mutating func decodeTransfer(_ node: YNode, _ path: String) -> TransferOptions {
        var marks = FieldMarks(node: mark(node))
        var transfer = TransferOptions(marks: marks)
        guard let f = fields(node, path, allowed: ["compression", "level", "archive", "path", "method"], required: []) else { return transfer }
        for (k, p) in f { marks.byField[k] = mark(p.value) }
        var compression = "zlib"
        if let v = f["compression"]?.value, let s = enumeration(v, "\(path).compression", ["zlib", "none"]) { compression = s }
        var level = 1
        if let v = f["level"]?.value {
            if let n = int(v, "\(path).level", range: 1...9) { level = n }
            if compression == "none" {
                error(v, "\(path).level", "\"level\" applies to zlib compression only; remove it or set compression: zlib")
            }
        }
        transfer.compression = compression == "none" ? .none : .zlib(level: level)
        if let v = f["archive"]?.value, let s = enumeration(v, "\(path).archive", ArchiveMode.allCases.map(\.rawValue)) {
            transfer.archive = ArchiveMode(rawValue: s) ?? .single
        }
        if let v = f["path"]?.value, let s = enumeration(v, "\(path).path", TransferPath.allCases.map(\.rawValue)) {
            transfer.path = TransferPath(rawValue: s) ?? .relay
        }
        if let v = f["method"]?.value, let s = enumeration(v, "\(path).method", TransferMethod.allCases.map(\.rawValue)) {
            transfer.method = TransferMethod(rawValue: s) ?? .archive
            if transfer.method == .pageServer {
                // Pages are sent raw: compression does not apply (zlib given explicitly is an error).
                if let c = f["compression"]?.value, compression == "zlib" {
                    error(c, "\(path).compression", "method page-server sends memory pages raw; remove compression or set compression: none")
                } else if let l = f["level"]?.value, compression == "zlib" {
                    error(l, "\(path).level", "method page-server sends memory pages raw; a zlib level does not apply")
                }
                transfer.compression = .none
                if let p = f["path"]?.value, transfer.path == .direct {
                    error(p, "\(path).path", "method page-server with path: direct is not yet available; use path: relay")
                }
            }
        }
        transfer.marks = marks
        return transfer
    }

    mutating func decodeRetry(_ node: YNode, _ path: String) -> RetryPolicy {
        var marks = FieldMarks(node: mark(node))
        var retry = RetryPolicy(marks: marks)
        guard let f = fields(node, path, allowed: ["attempts", "initialBackoff", "maxBackoff"], required: []) else { return retry }
        for (k, p) in f { marks.byField[k] = mark(p.value) }
        if let v = f["attempts"]?.value, let n = int(v, "\(path).attempts", range: 1...100) { retry.attempts = n }
        if let v = f["initialBackoff"]?.value, let d = duration(v, "\(path).initialBackoff", allowZero: false, minimum: RetryPolicy.minimumBackoff) { retry.initialBackoff = d }
        if let v = f["maxBackoff"]?.value, let d = duration(v, "\(path).maxBackoff", allowZero: false, minimum: RetryPolicy.minimumBackoff) { retry.maxBackoff = d }
        retry.marks = marks
        return retry
    }
}

/// String shapes the schema constrains with `pattern` / `minLength`.
enum StringRule {
    case any, nonEmpty, name, environmentName, address, user, hostDirectory, authorizedKeysFile, cgroupParent, dockerHost, image, algorithm

    func problem(_ value: String) -> String? {
        let scalars = value.unicodeScalars
        func only(_ allowed: (Unicode.Scalar) -> Bool) -> Bool { !scalars.isEmpty && scalars.allSatisfy(allowed) }
        func alnum(_ s: Unicode.Scalar) -> Bool { ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) }
        switch self {
        case .any:
            return nil
        case .nonEmpty:
            return value.isEmpty ? "must not be empty" : nil
        case .name:
            return isValidName(value) ? nil
                : "invalid name \"\(value)\": use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit"
        case .environmentName:
            // Never echo the value: a value that is not a variable name is most likely the secret itself.
            return PathExpander.isVariableName(value) ? nil
                : "not an environment variable name (letters, digits, '_'; not starting with a digit); write the variable's NAME, never the secret (the value is not shown)"
        case .address:
            return only { alnum($0) || $0 == "." || $0 == ":" || $0 == "-" } && scalars.first != "-" && scalars.first != "." ? nil
                : "\"\(value)\" is not an IP address or host name"
        case .user:
            return only { alnum($0) || $0 == "_" || $0 == "." || $0 == "-" } && scalars.first != "-" ? nil
                : "\"\(value)\" is not a user name"
        case .hostDirectory:
            return hostPathProblem(value)
        case .authorizedKeysFile:
            // migplan rewrites this file (mode 0600): only an authorized_keys file, never e.g. /etc/shadow.
            if let problem = hostPathProblem(value) { return problem }
            return value.split(separator: "/").last.map({ $0.hasPrefix("authorized_keys") }) == true ? nil
                : "\"\(value)\" is not an authorized_keys file: its name must start with authorized_keys (migplan rewrites this file)"
        case .cgroupParent:
            let components = value.split(separator: "/", omittingEmptySubsequences: false)
            return only { alnum($0) || "._/:@-".unicodeScalars.contains($0) } && !components.contains { $0 == "." || $0 == ".." } ? nil
                : "\"\(value)\" is not a cgroup parent (letters, digits, '.', '_', '/', ':', '@', '-'; no . or .. components)"
        case .dockerHost:
            return ["unix:///", "tcp://", "ssh://", "fd://"].contains { value.hasPrefix($0) } && scalars.allSatisfy({ (0x21...0x7E).contains($0.value) }) ? nil
                : "\"\(value)\" is not a docker host (unix:///path, tcp://host:port, ssh://..., fd://; no spaces or control characters)"
        case .image:
            return only { alnum($0) || "._-/:@".unicodeScalars.contains($0) } && alnum(scalars.first!) ? nil
                : "\"\(value)\" is not an image reference (e.g. migplan/face:latest)"
        case .algorithm:
            return only { alnum($0) || "@._+-".unicodeScalars.contains($0) } ? nil
                : "\"\(value)\" is not an SSH algorithm name"
        }
    }
}

/// Directories on hosts that must never be a container's bundle, a runc root or migplan's work
/// directory: migplan creates and deletes (`rm -rf`) files below these paths.
public let forbiddenHostDirectories: Set<String> = [
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local",
    "/usr/sbin", "/usr/share", "/var", "/var/lib", "/var/log", "/var/run", "/var/tmp",
]

/// Why `value` is not acceptable as a directory on a host (bundle, runcRoot, workDir), or nil.
/// The rule (mirrored by the schema's `hostDirectory`): absolute, made of `/`-separated components
/// of letters, digits, `.`, `_`, `-`; no empty (`//`, trailing `/`), `.` or `..` component; not `/`
/// nor a system directory (`forbiddenHostDirectories`). These paths reach shell commands and `rm -rf`.
func hostPathProblem(_ value: String) -> String? {
    func allowed(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "." || s == "_" || s == "-"
    }
    guard value.hasPrefix("/") else { return "\"\(value)\" must be an absolute path on the host (starting with /)" }
    if value == "/" { return "\"/\" is not allowed: migplan creates and removes files below this directory" }
    let components = value.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
    if !components.allSatisfy({ $0.unicodeScalars.allSatisfy(allowed) }) {
        return "\"\(value)\" is not a plain host path: use letters, digits, '.', '_', '-' between slashes (no spaces, quotes or shell characters)"
    }
    if components.contains(where: \.isEmpty) {
        return "\"\(value)\" has an empty component (// or a trailing /); write the path without them"
    }
    if components.contains(where: { $0 == "." || $0 == ".." }) {
        return "\"\(value)\" has a . or .. component; write the path without them"
    }
    if forbiddenHostDirectories.contains(value) {
        return "\"\(value)\" is a system directory: migplan creates and removes files below this directory; use a directory of its own, e.g. /var/lib/migplan"
    }
    return nil
}
