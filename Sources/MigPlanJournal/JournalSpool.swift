import Foundation
import MigPlanBasics

/// The local spool: an append-only file of JSON lines, one `JournalRecord` per line, each
/// written with a single `write` and `fsync`ed before `append` returns. Records land here while
/// the database is out of reach; `Journal.flush` writes them to the database (idempotently) and
/// then truncates the file. An `flock` on the file serialises appenders and flushers.
///
/// A crash can leave at most a partial last line; `read` skips it (the record it belonged to
/// was never acknowledged to the caller).
public struct JournalSpool: Sendable {
    public let fileURL: URL

    /// `dir` defaults to `$XDG_STATE_HOME/migplan/spool` or `~/.local/state/migplan/spool`.
    public init(directory dir: URL? = nil, name: String = "journal.jsonl") {
        let base = dir ?? Self.defaultDirectory()
        fileURL = base.appendingPathComponent(name)
    }

    /// The spool of one journal database: records spooled for one database are never flushed
    /// into another (file `journal-<first 16 hex of SHA-256 of user@host:port/db[/schema]>.jsonl`).
    public init(directory dir: URL? = nil, for config: JournalConfig) {
        let identity = config.target + (config.schema.map { "/" + $0 } ?? "")
        self.init(directory: dir, name: "journal-\(SHA256Hasher.hash(Array(identity.utf8)).hex.prefix(16)).jsonl")
    }

    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
            return URL(fileURLWithPath: state).appendingPathComponent("migplan/spool")
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return URL(fileURLWithPath: home).appendingPathComponent(".local/state/migplan/spool")
    }

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .secondsSince1970
        return e
    }()

    private func openLocked(_ flags: Int32) throws -> Int32 {
        let dir = fileURL.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw JournalError(.spool, "cannot create the spool directory: \(error.localizedDescription)", context: dir.path)
        }
        let fd = open(fileURL.path, flags | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError(.spool, "cannot open the spool: \(String(cString: strerror(errno)))", context: fileURL.path) }
        guard flock(fd, LOCK_EX) == 0 else {
            let e = errno
            close(fd)
            throw JournalError(.spool, "cannot lock the spool: \(String(cString: strerror(e)))", context: fileURL.path)
        }
        return fd
    }

    /// Appends records durably (one line each, then fsync).
    public func append(_ records: [JournalRecord]) throws {
        guard !records.isEmpty else { return }
        var bytes = Data()
        for r in records {
            do {
                bytes.append(try Self.encoder.encode(r))
            } catch {
                throw JournalError(.spool, "cannot encode a \(r.kind) record: \(error)", context: fileURL.path)
            }
            bytes.append(0x0a)
        }
        let fd = try openLocked(O_RDWR | O_CREAT | O_APPEND)
        defer { close(fd) }
        // A previous crash may have left a partial line: start ours on a fresh line.
        var prefix = Data()
        let size = lseek(fd, 0, SEEK_END)
        if size > 0 {
            var last: UInt8 = 0
            if pread(fd, &last, 1, size - 1) == 1, last != 0x0a { prefix.append(0x0a) }
        }
        let all = prefix + bytes
        try all.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw JournalError(.spool, "cannot write the spool: \(String(cString: strerror(errno)))", context: fileURL.path)
                }
                offset += n
            }
        }
        guard fsync(fd) == 0 else {
            throw JournalError(.spool, "cannot fsync the spool: \(String(cString: strerror(errno)))", context: fileURL.path)
        }
    }

    public func append(_ record: JournalRecord) throws { try append([record]) }

    /// What a read found: the records in order, and how many unreadable lines were skipped.
    public struct Contents: Sendable {
        public var records: [JournalRecord]
        public var skippedLines: Int
    }

    /// All records in the spool (empty when there is no spool file).
    public func read() throws -> Contents {
        guard FileManager.default.fileExists(atPath: fileURL.path) else { return Contents(records: [], skippedLines: 0) }
        let fd = try openLocked(O_RDONLY)
        defer { close(fd) }
        return try Self.parse(readAll(fd))
    }

    static func parse(_ data: Data) throws -> Contents {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        var records: [JournalRecord] = []
        var skipped = 0
        for line in data.split(separator: 0x0a, omittingEmptySubsequences: true) {
            if let r = try? decoder.decode(JournalRecord.self, from: Data(line)) {
                records.append(r)
            } else {
                skipped += 1
            }
        }
        return Contents(records: records, skippedLines: skipped)
    }

    private func readAll(_ fd: Int32) throws -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw JournalError(.spool, "cannot read the spool: \(String(cString: strerror(errno)))", context: fileURL.path)
            }
            if n == 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        return data
    }

    /// Writes the spooled records with `write` (in order, each idempotent), then empties the
    /// spool, all under the spool's lock so no record appended meanwhile is lost. Returns how
    /// many records were handed to `write`. If `write` throws, the spool is left as it was.
    public func drain(_ write: ([JournalRecord]) throws -> Void) throws -> Int {
        guard FileManager.default.fileExists(atPath: fileURL.path) else { return 0 }
        let fd = try openLocked(O_RDWR)
        defer { close(fd) }
        let contents = try Self.parse(readAll(fd))
        if !contents.records.isEmpty { try write(contents.records) }
        guard ftruncate(fd, 0) == 0, fsync(fd) == 0 else {
            throw JournalError(.spool, "cannot empty the spool: \(String(cString: strerror(errno)))", context: fileURL.path)
        }
        return contents.records.count
    }

    /// Where `journal verify` keeps the audit head it last saw for this database
    /// (`audit-anchor-<same hash>.json`, beside the spool).
    public var anchorURL: URL {
        let name = fileURL.deletingPathExtension().lastPathComponent.replacingOccurrences(of: "journal", with: "audit-anchor")
        return fileURL.deletingLastPathComponent().appendingPathComponent(name + ".json")
    }

    /// The anchor saved by an earlier verify, if any.
    public func loadAnchor() throws -> AuditChain.Anchor? {
        guard let data = FileManager.default.contents(atPath: anchorURL.path) else { return nil }
        do {
            return try JSONDecoder().decode(AuditChain.Anchor.self, from: data)
        } catch {
            throw JournalError(.spool, "unreadable audit anchor: \(error)", context: anchorURL.path)
        }
    }

    /// Saves the anchor (written to a temporary file, fsync'd, renamed over the old one).
    public func saveAnchor(_ anchor: AuditChain.Anchor) throws {
        let dir = anchorURL.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            let tmp = dir.appendingPathComponent(".\(anchorURL.lastPathComponent).\(getpid())")
            try e.encode(anchor).write(to: tmp)
            let fd = open(tmp.path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { _ = fsync(fd); close(fd) }
            guard rename(tmp.path, anchorURL.path) == 0 else { throw JournalError(.spool, String(cString: strerror(errno))) }
        } catch let e as JournalError {
            throw JournalError(.spool, "cannot save the audit anchor: \(e.message)", context: anchorURL.path)
        } catch {
            throw JournalError(.spool, "cannot save the audit anchor: \(error.localizedDescription)", context: anchorURL.path)
        }
    }

    /// Where records the database refused during a flush are kept (`<spool>.rejected`), one
    /// JSON line each with the reason, for a person to look at; never flushed automatically.
    public var rejectedURL: URL { fileURL.appendingPathExtension("rejected") }

    struct Rejected: Codable {
        var reason: String
        var record: JournalRecord
    }

    /// Appends a refused record to `rejectedURL` (fsync'd).
    public func reject(_ record: JournalRecord, reason: String) throws {
        let line: Data
        do {
            line = try Self.encoder.encode(Rejected(reason: reason, record: record)) + Data([0x0a])
        } catch {
            throw JournalError(.spool, "cannot encode a rejected \(record.kind) record: \(error)", context: rejectedURL.path)
        }
        let fd = open(rejectedURL.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError(.spool, "cannot open: \(String(cString: strerror(errno)))", context: rejectedURL.path) }
        defer { close(fd) }
        let ok = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == $0.count }
        guard ok, fsync(fd) == 0 else {
            throw JournalError(.spool, "cannot write: \(String(cString: strerror(errno)))", context: rejectedURL.path)
        }
    }

    /// How many records were set aside as rejected.
    public var rejectedCount: Int {
        guard let data = FileManager.default.contents(atPath: rejectedURL.path) else { return 0 }
        return data.split(separator: 0x0a, omittingEmptySubsequences: true).count
    }

    /// Whether records are waiting.
    public var isEmpty: Bool {
        let attrs = try? FileManager.default.attributesOfItem(atPath: fileURL.path)
        return ((attrs?[.size] as? NSNumber)?.intValue ?? 0) == 0
    }
}
