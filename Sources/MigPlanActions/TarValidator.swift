// Validation of tar archives before anything is unpacked: every entry must land inside the
// directory it is unpacked into. Used twice per transfer: in-stream on the controller while the
// archive is relayed (`ArchiveStreamValidator`: headers parsed as they pass, zlib/gzip inflated
// on the fly), and on the destination from `tar -tv` (`TarListingValidator`) before `tar -x`.
internal import CZlib

/// Why an archive was refused. Never retryable: the same bytes would be refused again.
public struct ArchiveRejection: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Reason: String, Sendable, Hashable, Codable {
        case absolutePath, parentTraversal, linkOutside, linkUnderLink, deviceOrFIFO, unsupportedType
        case badHeader, badSize, truncated, tooLarge, badCompression, badListing
    }
    public var reason: Reason
    /// The entry's name as the archive gives it (nil when the header itself is unreadable).
    public var entry: String?
    public var message: String

    public init(_ reason: Reason, entry: String?, _ message: String) {
        self.reason = reason
        self.entry = entry
        self.message = message
    }

    public var description: String {
        if let entry { return "archive refused: entry \"\(entry)\": \(message)" }
        return "archive refused: \(message)"
    }
}

/// Lexical path checks shared by the stream validator and the listing validator.
public enum ArchivePathRules {
    /// The components of `name` after dropping empty ones and `.`; throws for an absolute name or a
    /// `..` component.
    public static func components(of name: String) throws(ArchiveRejection) -> [Substring] {
        if name.isEmpty { throw ArchiveRejection(.badHeader, entry: name, "empty entry name") }
        if name.hasPrefix("/") { throw ArchiveRejection(.absolutePath, entry: name, "absolute path") }
        let parts = name.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        if parts.contains("..") { throw ArchiveRejection(.parentTraversal, entry: name, "contains a \"..\" component") }
        return parts
    }

    /// Checks a symbolic link `name -> target`: the target, resolved lexically from the link's
    /// directory, must stay inside the root.
    public static func checkSymlink(name: String, target: String) throws(ArchiveRejection) {
        let parts = try components(of: name)
        if target.hasPrefix("/") { throw ArchiveRejection(.linkOutside, entry: name, "symbolic link to absolute path \(target)") }
        var depth = max(0, parts.count - 1)
        for part in target.split(separator: "/", omittingEmptySubsequences: true) where part != "." {
            if part == ".." {
                depth -= 1
                if depth < 0 { throw ArchiveRejection(.linkOutside, entry: name, "symbolic link points outside (\(target))") }
            } else {
                depth += 1
            }
        }
    }

    /// Checks a hard link `name => target`: the target is a path inside the archive.
    public static func checkHardlink(name: String, target: String) throws(ArchiveRejection) {
        _ = try components(of: name)
        if target.hasPrefix("/") { throw ArchiveRejection(.linkOutside, entry: name, "hard link to absolute path \(target)") }
        if target.split(separator: "/").contains("..") {
            throw ArchiveRejection(.linkOutside, entry: name, "hard link points outside (\(target))")
        }
    }
}

/// Remembers symbolic links seen so far: an entry below one could be written through it.
struct SymlinkTracker {
    private var links: Set<String> = []

    mutating func check(name: String, isSymlink: Bool) throws(ArchiveRejection) {
        let parts = try ArchivePathRules.components(of: name)
        var prefix = ""
        for part in parts.dropLast() {
            prefix = prefix.isEmpty ? String(part) : prefix + "/" + part
            if links.contains(prefix) {
                throw ArchiveRejection(.linkUnderLink, entry: name, "lies below the symbolic link \(prefix)")
            }
        }
        if isSymlink { links.insert(parts.joined(separator: "/")) }
    }
}

/// Parses a tar stream (ustar, GNU long names, pax headers) incrementally and refuses entries
/// that would land outside the extraction directory, device nodes and FIFOs, sizes that are
/// negative or larger than `maxEntryBytes`, bad checksums and truncated streams.
public struct TarStreamValidator: Sendable {
    public let maxEntryBytes: Int64
    /// Entries accepted so far.
    public private(set) var entries: Int = 0
    private var header: [UInt8] = []
    private var skipRemaining: Int64 = 0
    /// Collects the data of a GNU long name / pax header entry instead of skipping it.
    private var collecting: (kind: UInt8, remaining: Int64, padded: Int64, data: [UInt8])?
    private var pendingLongName: String?
    private var pendingLongLink: String?
    private var pendingPaxPath: String?
    private var pendingPaxLink: String?
    private var zeroBlocks = 0
    private var ended = false
    private var links = SymlinkTracker()

    public init(maxEntryBytes: Int64 = 64 << 30) {
        self.maxEntryBytes = maxEntryBytes
    }

    /// Feeds the next bytes of the (uncompressed) tar stream.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(ArchiveRejection) {
        var index = 0
        let count = bytes.count
        while index < count {
            if ended { return }  // data after the end-of-archive marker is ignored (as tar does)
            if skipRemaining > 0 {
                let n = Int(min(Int64(count - index), skipRemaining))
                skipRemaining -= Int64(n)
                index += n
                continue
            }
            if var c = collecting {
                let n = Int(min(Int64(count - index), c.padded))
                let keep = Int(min(Int64(n), c.remaining))
                if keep > 0 { c.data.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + keep)])) }
                c.remaining -= Int64(keep)
                c.padded -= Int64(n)
                index += n
                if c.padded == 0 {
                    collecting = nil
                    try finishCollected(kind: c.kind, data: c.data)
                } else {
                    collecting = c
                }
                continue
            }
            let n = min(512 - header.count, count - index)
            header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + n)]))
            index += n
            if header.count == 512 {
                let block = header
                header.removeAll(keepingCapacity: true)
                try processHeader(block)
            }
        }
    }

    public mutating func feed(_ bytes: [UInt8]) throws(ArchiveRejection) {
        var failure: ArchiveRejection?
        bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            do throws(ArchiveRejection) { try feed(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Call at the end of the stream: throws if it stopped inside a header or an entry.
    public func finish() throws(ArchiveRejection) {
        if ended { return }
        if !header.isEmpty || skipRemaining > 0 || collecting != nil {
            throw ArchiveRejection(.truncated, entry: nil, "the tar stream ends inside an entry")
        }
        if entries == 0 && zeroBlocks == 0 {
            throw ArchiveRejection(.truncated, entry: nil, "empty tar stream")
        }
        // A stream without the two zero blocks at the end: GNU tar warns but accepts it; so do we
        // only when at least one complete entry was seen.
    }

    private mutating func processHeader(_ block: [UInt8]) throws(ArchiveRejection) {
        if block.allSatisfy({ $0 == 0 }) {
            zeroBlocks += 1
            if zeroBlocks >= 2 { ended = true }
            return
        }
        if zeroBlocks > 0 {
            throw ArchiveRejection(.badHeader, entry: nil, "a lone zero block inside the archive")
        }
        try verifyChecksum(block)
        let type = block[156]
        let size = try Self.parseNumber(block[124..<136], field: "size")
        if size < 0 { throw ArchiveRejection(.badSize, entry: Self.headerName(block), "negative size \(size)") }
        if size > maxEntryBytes {
            throw ArchiveRejection(.tooLarge, entry: Self.headerName(block), "size \(size) exceeds the limit of \(maxEntryBytes) bytes")
        }
        let padded = (size + 511) / 512 * 512
        switch type {
        case UInt8(ascii: "L"), UInt8(ascii: "K"), UInt8(ascii: "x"):
            guard size <= 1 << 20 else {
                throw ArchiveRejection(.tooLarge, entry: nil, "extended header of \(size) bytes")
            }
            collecting = (type, size, padded, [])
            if padded == 0 { collecting = nil; try finishCollected(kind: type, data: []) }
            return
        case UInt8(ascii: "g"):
            skipRemaining = padded  // global pax header: applies to nothing we check
            return
        default:
            break
        }
        let name = pendingPaxPath ?? pendingLongName ?? Self.headerName(block)
        let linkTarget = pendingPaxLink ?? pendingLongLink ?? Self.cString(block[157..<257])
        pendingPaxPath = nil
        pendingLongName = nil
        pendingPaxLink = nil
        pendingLongLink = nil
        switch type {
        case 0, UInt8(ascii: "0"), UInt8(ascii: "7"), UInt8(ascii: "5"):
            try links.check(name: name, isSymlink: false)
        case UInt8(ascii: "1"):
            try links.check(name: name, isSymlink: false)
            try ArchivePathRules.checkHardlink(name: name, target: linkTarget)
        case UInt8(ascii: "2"):
            try links.check(name: name, isSymlink: true)
            try ArchivePathRules.checkSymlink(name: name, target: linkTarget)
        case UInt8(ascii: "3"), UInt8(ascii: "4"), UInt8(ascii: "6"):
            let what = type == UInt8(ascii: "6") ? "a FIFO" : "a device node"
            throw ArchiveRejection(.deviceOrFIFO, entry: name, "is \(what); checkpoint archives hold none")
        default:
            throw ArchiveRejection(.unsupportedType, entry: name, "unsupported entry type \(Self.typeName(type))")
        }
        entries += 1
        // Directories, links and the like carry no data; regular files carry `size` bytes.
        skipRemaining = (type == UInt8(ascii: "5") || type == UInt8(ascii: "1") || type == UInt8(ascii: "2")) ? 0 : padded
    }

    private mutating func finishCollected(kind: UInt8, data: [UInt8]) throws(ArchiveRejection) {
        switch kind {
        case UInt8(ascii: "L"): pendingLongName = Self.cString(data[...])
        case UInt8(ascii: "K"): pendingLongLink = Self.cString(data[...])
        default:
            let records = try Self.parsePax(data)
            if let path = records["path"] { pendingPaxPath = path }
            if let link = records["linkpath"] { pendingPaxLink = link }
            if let size = records["size"] {
                guard let n = Int64(size), n >= 0, n <= maxEntryBytes else {
                    throw ArchiveRejection(.badSize, entry: records["path"], "pax size \(size) is invalid or too large")
                }
                // A pax size overrides the header's: the validator would desynchronise; refuse.
                throw ArchiveRejection(.unsupportedType, entry: records["path"], "pax size overrides are not accepted")
            }
        }
    }

    private func verifyChecksum(_ block: [UInt8]) throws(ArchiveRejection) {
        let recorded: Int64
        do throws(ArchiveRejection) {
            recorded = try Self.parseNumber(block[148..<156], field: "checksum")
        } catch {
            throw ArchiveRejection(.badHeader, entry: nil, "unreadable header checksum (not a tar stream?)")
        }
        var sum: Int64 = 0
        for (i, byte) in block.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(byte) }
        guard sum == recorded else {
            throw ArchiveRejection(.badHeader, entry: nil, "header checksum mismatch (corrupt or not a tar stream)")
        }
    }

    /// Octal (NUL/space terminated) or GNU base-256 (first byte 0x80 positive, 0xff negative).
    static func parseNumber(_ field: ArraySlice<UInt8>, field name: String) throws(ArchiveRejection) -> Int64 {
        guard let first = field.first else { return 0 }
        if first & 0x80 != 0 {
            let negative = first == 0xff
            var value: Int64 = 0
            var firstByte = true
            for byte in field {
                let b = firstByte ? (negative ? byte : byte & 0x7f) : byte
                firstByte = false
                if !negative && value > (Int64.max >> 8) {
                    throw ArchiveRejection(.badSize, entry: nil, "\(name) field overflows")
                }
                value = negative ? (value << 8) | Int64(b ^ 0xff) : (value << 8) | Int64(b)
                if negative && value > (Int64.max >> 9) { throw ArchiveRejection(.badSize, entry: nil, "\(name) field overflows") }
            }
            return negative ? -(value + 1) : value
        }
        var value: Int64 = 0
        var seenDigit = false
        var done = false
        for byte in field {
            if byte == 0 || byte == 32 {
                if seenDigit { done = true }
                continue
            }
            guard !done, (48...55).contains(byte) else {
                throw ArchiveRejection(.badHeader, entry: nil, "\(name) field is not an octal number")
            }
            guard value <= (Int64.max >> 3) else { throw ArchiveRejection(.badSize, entry: nil, "\(name) field overflows") }
            value = value * 8 + Int64(byte - 48)
            seenDigit = true
        }
        return value
    }

    static func cString(_ bytes: ArraySlice<UInt8>) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }

    static func headerName(_ block: [UInt8]) -> String {
        let name = cString(block[0..<100])
        let isUstar = block[257..<262].elementsEqual("ustar".utf8)
        let prefix = isUstar ? cString(block[345..<500]) : ""
        return prefix.isEmpty ? name : prefix + "/" + name
    }

    static func typeName(_ type: UInt8) -> String {
        (32...126).contains(type) ? "'\(Character(UnicodeScalar(type)))'" : "0x" + String(type, radix: 16)
    }

    /// pax records: `LEN key=value\n`.
    static func parsePax(_ data: [UInt8]) throws(ArchiveRejection) -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < data.count {
            guard let space = data[i...].firstIndex(of: 32), let length = Int(String(decoding: data[i..<space], as: UTF8.self)),
                  length > 0, i + length <= data.count else {
                throw ArchiveRejection(.badHeader, entry: nil, "malformed pax extended header")
            }
            let record = data[(space + 1)..<(i + length - 1)]
            if let eq = record.firstIndex(of: UInt8(ascii: "=")) {
                out[String(decoding: record[record.startIndex..<eq], as: UTF8.self)] =
                    String(decoding: record[(eq + 1)...], as: UTF8.self)
            }
            i += length
        }
        return out
    }
}

/// Inflates a zlib or gzip stream (format detected from its header) chunk by chunk.
final class ZlibInflater {
    private var stream = z_stream()
    private var finished = false
    private var output = [UInt8](repeating: 0, count: 256 * 1024)

    init() throws(ArchiveRejection) {
        let rc = inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard rc == Z_OK else { throw ArchiveRejection(.badCompression, entry: nil, "zlib initialisation failed (\(rc))") }
    }

    deinit { inflateEnd(&stream) }

    var isFinished: Bool { finished }

    /// Inflates `input`, handing every produced chunk to `sink`.
    func inflate(_ input: UnsafeRawBufferPointer,
                 _ sink: (UnsafeRawBufferPointer) throws(ArchiveRejection) -> Void) throws(ArchiveRejection) {
        guard let base = input.baseAddress, input.count > 0 else { return }
        if finished { return }  // trailing bytes after the end of the compressed stream
        stream.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        let capacity = output.count
        while stream.avail_in > 0 && !finished {
            var produced = 0
            var rc: Int32 = Z_OK
            output.withUnsafeMutableBytes { out in
                stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(capacity)
                rc = CZlib.inflate(&stream, Z_NO_FLUSH)
                produced = capacity - Int(stream.avail_out)
            }
            if produced > 0 {
                var failure: ArchiveRejection?
                output.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
                    do throws(ArchiveRejection) { try sink(UnsafeRawBufferPointer(rebasing: raw[0..<produced])) } catch { failure = error }
                }
                if let failure { throw failure }
            }
            switch rc {
            case Z_STREAM_END: finished = true
            case Z_OK, Z_BUF_ERROR: continue
            default:
                throw ArchiveRejection(.badCompression, entry: nil, "the compressed stream is corrupt (zlib \(rc))")
            }
        }
    }
}

/// What the controller runs over a relayed archive: inflate when compressed, then parse tar
/// headers. Not thread-safe: one stream, one thread.
public final class ArchiveStreamValidator: @unchecked Sendable {
    private var tar: TarStreamValidator
    private let inflater: ZlibInflater?

    public init(compressed: Bool, maxEntryBytes: Int64 = 64 << 30) throws(ArchiveRejection) {
        tar = TarStreamValidator(maxEntryBytes: maxEntryBytes)
        inflater = compressed ? try ZlibInflater() : nil
    }

    public var entries: Int { tar.entries }

    public func feed(_ bytes: UnsafeRawBufferPointer) throws(ArchiveRejection) {
        if let inflater {
            try inflater.inflate(bytes) { (chunk: UnsafeRawBufferPointer) throws(ArchiveRejection) in try tar.feed(chunk) }
        } else {
            try tar.feed(bytes)
        }
    }

    public func feed(_ bytes: [UInt8]) throws(ArchiveRejection) {
        var failure: ArchiveRejection?
        bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            do throws(ArchiveRejection) { try feed(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    public func finish() throws(ArchiveRejection) {
        if let inflater, !inflater.isFinished {
            throw ArchiveRejection(.truncated, entry: nil, "the compressed stream ends early")
        }
        try tar.finish()
    }
}

/// Validates the output of `tar -tv --quoting-style=c` (GNU tar) as run on the destination.
public enum TarListingValidator {
    /// Throws for the first entry that would land outside, or a device node / FIFO; returns the
    /// number of entries.
    @discardableResult
    public static func validate(_ listing: String) throws(ArchiveRejection) -> Int {
        try summarize(listing).entries
    }

    /// What a validated listing holds.
    public struct Summary: Sendable, Hashable {
        public var entries: Int
        /// Sum of the entries' sizes (what extraction writes).
        public var bytes: Int64
    }

    /// Validates like `validate` and also adds up the entries' sizes.
    public static func summarize(_ listing: String) throws(ArchiveRejection) -> Summary {
        var links = SymlinkTracker()
        var count = 0
        var bytes: Int64 = 0
        for rawLine in listing.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(rawLine)
            guard let type = line.first else { continue }
            guard let quote = line.firstIndex(of: "\"") else {
                throw ArchiveRejection(.badListing, entry: nil, "unexpected tar listing line: \(line.prefix(200))")
            }
            var rest = line[quote...]
            let fields = line[..<quote].split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 3, let size = Int64(fields[2]), size > 0 { bytes += size }
            let name = try parseQuoted(&rest, line: line)
            let trimmed = rest.drop(while: { $0 == " " })
            var target: String?
            var isHard = false
            if trimmed.hasPrefix("-> ") {
                var t = trimmed.dropFirst(3)
                target = try parseQuoted(&t, line: line)
            } else if trimmed.hasPrefix("link to ") {
                var t = trimmed.dropFirst(8)
                target = try parseQuoted(&t, line: line)
                isHard = true
            }
            switch type {
            case "-", "d":
                if isHard, let target {
                    try links.check(name: name, isSymlink: false)
                    try ArchivePathRules.checkHardlink(name: name, target: target)
                } else {
                    try links.check(name: name, isSymlink: false)
                }
            case "h":
                try links.check(name: name, isSymlink: false)
                try ArchivePathRules.checkHardlink(name: name, target: target ?? "")
            case "l":
                try links.check(name: name, isSymlink: true)
                try ArchivePathRules.checkSymlink(name: name, target: target ?? "")
            case "c", "b", "p":
                throw ArchiveRejection(.deviceOrFIFO, entry: name, "is a device node or FIFO; checkpoint archives hold none")
            default:
                throw ArchiveRejection(.unsupportedType, entry: name, "unsupported entry type '\(type)'")
            }
            count += 1
        }
        if count == 0 { throw ArchiveRejection(.badListing, entry: nil, "the archive lists no entries") }
        return Summary(entries: count, bytes: bytes)
    }

    /// Reads a C-style quoted string (`"a\"b\\c\n"`, octal escapes) from the start of `text`.
    static func parseQuoted(_ text: inout Substring, line: String) throws(ArchiveRejection) -> String {
        guard text.first == "\"" else {
            throw ArchiveRejection(.badListing, entry: nil, "expected a quoted name in: \(line.prefix(200))")
        }
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8.dropFirst())
        var i = 0
        var closed = false
        while i < utf8.count {
            let c = utf8[i]
            if c == UInt8(ascii: "\"") { closed = true; i += 1; break }
            if c == UInt8(ascii: "\\"), i + 1 < utf8.count {
                let e = utf8[i + 1]
                switch e {
                case UInt8(ascii: "n"): bytes.append(10); i += 2
                case UInt8(ascii: "t"): bytes.append(9); i += 2
                case UInt8(ascii: "r"): bytes.append(13); i += 2
                case UInt8(ascii: "f"): bytes.append(12); i += 2
                case UInt8(ascii: "v"): bytes.append(11); i += 2
                case UInt8(ascii: "b"): bytes.append(8); i += 2
                case UInt8(ascii: "a"): bytes.append(7); i += 2
                case UInt8(ascii: "0")...UInt8(ascii: "7"):
                    var value = 0
                    var j = i + 1
                    while j < utf8.count, j < i + 4, (48...55).contains(utf8[j]) { value = value * 8 + Int(utf8[j] - 48); j += 1 }
                    bytes.append(UInt8(truncatingIfNeeded: value))
                    i = j
                default: bytes.append(e); i += 2
                }
                continue
            }
            bytes.append(c)
            i += 1
        }
        guard closed else { throw ArchiveRejection(.badListing, entry: nil, "unterminated quoted name in: \(line.prefix(200))") }
        utf8.removeFirst(i)
        text = Substring(String(decoding: utf8, as: UTF8.self))
        return String(decoding: bytes, as: UTF8.self)
    }
}
