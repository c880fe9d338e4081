import Foundation
import Testing
@testable import MigPlanActions

/// Hand-made tar streams: one 512-byte ustar header per entry, with a correct checksum unless told.
enum TarBuilder {
    static func header(_ name: String, type: Character = "0", size: Int64 = 0, link: String = "",
                       rawSize: [UInt8]? = nil, breakChecksum: Bool = false) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, at offset: Int, max: Int) {
            for (i, b) in s.utf8.prefix(max).enumerated() { h[offset + i] = b }
        }
        put(name, at: 0, max: 100)
        put("0000644", at: 100, max: 8)
        put("0000000", at: 108, max: 8)
        put("0000000", at: 116, max: 8)
        if let rawSize {
            for (i, b) in rawSize.prefix(12).enumerated() { h[124 + i] = b }
        } else {
            put(String(format: "%011llo", size), at: 124, max: 12)
        }
        put("00000000000", at: 136, max: 12)
        h[156] = type.asciiValue!
        put(link, at: 157, max: 100)
        put("ustar", at: 257, max: 6)
        put("00", at: 263, max: 2)
        for i in 148..<156 { h[i] = 32 }
        var sum = h.reduce(0) { $0 + Int($1) }
        if breakChecksum { sum += 1 }
        put(String(format: "%06o", sum), at: 148, max: 6)
        h[154] = 0
        h[155] = 32
        return h
    }

    static func file(_ name: String, _ content: [UInt8]) -> [UInt8] {
        var out = header(name, size: Int64(content.count)) + content
        out += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
        return out
    }

    static let end = [UInt8](repeating: 0, count: 1024)

    static func validate(_ bytes: [UInt8], chunk: Int = 100) throws -> Int {
        var v = TarStreamValidator(maxEntryBytes: 1 << 30)
        var i = 0
        while i < bytes.count {
            try v.feed(Array(bytes[i..<min(bytes.count, i + chunk)]))
            i += chunk
        }
        try v.finish()
        return v.entries
    }

    static func reason(_ bytes: [UInt8]) -> ArchiveRejection.Reason? {
        do {
            _ = try validate(bytes)
            return nil
        } catch let e as ArchiveRejection {
            return e.reason
        } catch {
            return nil
        }
    }
}

@Suite struct TarStreamValidatorTests {
    @Test func acceptsCheckpointLikeArchive() throws {
        let tar = TarBuilder.header("face-1/", type: "5") + TarBuilder.file("face-1/inventory.img", Array("abc".utf8))
            + TarBuilder.file("face-1/pages-1.img", [UInt8](repeating: 7, count: 5000))
            + TarBuilder.header("face-1/link", type: "2", link: "pages-1.img") + TarBuilder.end
        #expect(try TarBuilder.validate(tar, chunk: 7) == 4)
        #expect(try TarBuilder.validate(tar, chunk: 100_000) == 4)
    }

    @Test func refusesParentTraversal() {
        #expect(TarBuilder.reason(TarBuilder.file("../evil", [1]) + TarBuilder.end) == .parentTraversal)
        #expect(TarBuilder.reason(TarBuilder.file("face-1/../../evil", [1]) + TarBuilder.end) == .parentTraversal)
    }

    @Test func refusesAbsolutePath() {
        #expect(TarBuilder.reason(TarBuilder.file("/etc/cron.d/x", [1]) + TarBuilder.end) == .absolutePath)
    }

    @Test func refusesSymlinkPointingOut() {
        #expect(TarBuilder.reason(TarBuilder.header("a/link", type: "2", link: "../../etc") + TarBuilder.end) == .linkOutside)
        #expect(TarBuilder.reason(TarBuilder.header("link", type: "2", link: "/etc/passwd") + TarBuilder.end) == .linkOutside)
    }

    @Test func refusesEntryWrittenThroughASymlink() {
        let tar = TarBuilder.header("d", type: "2", link: "x") + TarBuilder.file("d/file", [1]) + TarBuilder.end
        #expect(TarBuilder.reason(tar) == .linkUnderLink)
    }

    @Test func refusesHardlinkPointingOut() {
        #expect(TarBuilder.reason(TarBuilder.header("a", type: "1", link: "/etc/shadow") + TarBuilder.end) == .linkOutside)
        #expect(TarBuilder.reason(TarBuilder.header("a", type: "1", link: "../x") + TarBuilder.end) == .linkOutside)
    }

    @Test func refusesDeviceNodesAndFIFOs() {
        #expect(TarBuilder.reason(TarBuilder.header("dev/sda", type: "4") + TarBuilder.end) == .deviceOrFIFO)
        #expect(TarBuilder.reason(TarBuilder.header("dev/null", type: "3") + TarBuilder.end) == .deviceOrFIFO)
        #expect(TarBuilder.reason(TarBuilder.header("fifo", type: "6") + TarBuilder.end) == .deviceOrFIFO)
    }

    @Test func refusesGiantAndNegativeSizes() {
        // base-256: 0x80 then 2^62 (positive, far over the limit)
        var giant = [UInt8](repeating: 0, count: 12)
        giant[0] = 0x80
        giant[4] = 0x40
        #expect(TarBuilder.reason(TarBuilder.header("big", rawSize: giant) + TarBuilder.end) == .tooLarge)
        // base-256 negative: 0xff...
        let negative = [UInt8](repeating: 0xff, count: 12)
        #expect(TarBuilder.reason(TarBuilder.header("neg", rawSize: negative) + TarBuilder.end) == .badSize)
        // octal over the limit (1 GiB limit in these tests)
        #expect(TarBuilder.reason(TarBuilder.header("huge", size: 8 << 30) + TarBuilder.end) == .tooLarge)
    }

    @Test func refusesTruncatedHeaderAndData() {
        let header = TarBuilder.header("a", size: 10)
        #expect(TarBuilder.reason(Array(header.prefix(300))) == .truncated)
        #expect(TarBuilder.reason(header + [1, 2, 3]) == .truncated)
    }

    @Test func refusesBadChecksumAndGarbage() {
        #expect(TarBuilder.reason(TarBuilder.header("a", breakChecksum: true) + TarBuilder.end) == .badHeader)
        #expect(TarBuilder.reason([UInt8](repeating: 0x41, count: 1024)) == .badHeader)
    }

    @Test func followsGNULongNames() {
        let long = String(repeating: "d/", count: 60) + "../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../evil"
        let data = Array(long.utf8) + [0]
        let tar = TarBuilder.file("././@LongLink", data).enumerated().map { $0.offset == 156 ? UInt8(ascii: "L") : $0.element }
        // fix the checksum of the modified header
        var header = Array(tar.prefix(512))
        for i in 148..<156 { header[i] = 32 }
        let sum = header.reduce(0) { $0 + Int($1) }
        let text = Array(String(format: "%06o", sum).utf8)
        for i in 0..<6 { header[148 + i] = text[i] }
        header[154] = 0
        let stream = header + Array(tar.dropFirst(512)) + TarBuilder.file("innocent", [1]) + TarBuilder.end
        #expect(TarBuilder.reason(stream) == .parentTraversal)
    }

    @Test func inflatesGzipStreamsBeforeParsing() throws {
        let tar = TarBuilder.file("face-1/inventory.img", [1, 2, 3]) + TarBuilder.end
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-tar-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let plain = dir.appendingPathComponent("a.tar")
        try Data(tar).write(to: plain)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-1", "-n", plain.path]
        try p.run()
        p.waitUntilExit()
        let gz = try [UInt8](Data(contentsOf: dir.appendingPathComponent("a.tar.gz")))
        let v = try ArchiveStreamValidator(compressed: true)
        for chunk in stride(from: 0, to: gz.count, by: 5) { try v.feed(Array(gz[chunk..<min(gz.count, chunk + 5)])) }
        try v.finish()
        #expect(v.entries == 1)

        let hostile = TarBuilder.file("../x", [1]) + TarBuilder.end
        try Data(hostile).write(to: plain)
        let q = Process()
        q.executableURL = URL(fileURLWithPath: "/bin/gzip")
        q.arguments = ["-f", "-1", "-n", plain.path]
        try q.run()
        q.waitUntilExit()
        let bad = try [UInt8](Data(contentsOf: dir.appendingPathComponent("a.tar.gz")))
        let w = try ArchiveStreamValidator(compressed: true)
        #expect(throws: ArchiveRejection.self) { try w.feed(bad) }
    }

    @Test func refusesCorruptCompressedStream() throws {
        let v = try ArchiveStreamValidator(compressed: true)
        #expect(throws: ArchiveRejection.self) {
            try v.feed([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] + [UInt8](repeating: 0xff, count: 64))
            try v.finish()
        }
    }
}

@Suite struct TarListingValidatorTests {
    @Test func acceptsGNUTarListing() throws {
        let listing = """
            drwxr-xr-x root/root         0 2026-11-25 20:00 "face-1/"
            -rw-r--r-- root/root      1234 2026-11-25 20:00 "face-1/inventory.img"
            -rw-r--r-- root/root      1234 2026-11-25 20:00 "face-1/a b\\"c.img"
            lrwxrwxrwx root/root         0 2026-11-25 20:00 "face-1/l" -> "inventory.img"
            hrw-r--r-- root/root         0 2026-11-25 20:00 "face-1/h" link to "face-1/inventory.img"

            """
        #expect(try TarListingValidator.validate(listing) == 5)
        #expect(try TarListingValidator.summarize(listing).bytes == 2468)
    }

    @Test func refusesHostileListings() {
        func reason(_ l: String) -> ArchiveRejection.Reason? {
            do { _ = try TarListingValidator.validate(l); return nil } catch { return error.reason }
        }
        #expect(reason(#"-rw-r--r-- root/root 1 2026-11-25 20:00 "../evil""#) == .parentTraversal)
        #expect(reason(#"-rw-r--r-- root/root 1 2026-11-25 20:00 "/etc/passwd""#) == .absolutePath)
        #expect(reason(#"lrwxrwxrwx root/root 0 2026-11-25 20:00 "x" -> "../../etc""#) == .linkOutside)
        #expect(reason(#"hrw-r--r-- root/root 0 2026-11-25 20:00 "x" link to "/etc/shadow""#) == .linkOutside)
        #expect(reason(#"crw-r--r-- root/root 1,3 2026-11-25 20:00 "null""#) == .deviceOrFIFO)
        #expect(reason(#"prw-r--r-- root/root 0 2026-11-25 20:00 "fifo""#) == .deviceOrFIFO)
        #expect(reason("") == .badListing)
    }

    @Test func decodesCEscapes() throws {
        var s = Substring(#""a\nb\\c\303\251" tail"#)
        let name = try TarListingValidator.parseQuoted(&s, line: "")
        #expect(name == "a\nb\\cé")
        #expect(s == " tail")
    }
}

@Suite struct RealTarCompatibilityTests {
    func sh(_ script: String) throws -> (Int32, Data) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", script]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, data)
    }

    @Test func gnuTarArchivesAndListingsOfCheckpointDirectoriesAreAccepted() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-real-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let long = String(repeating: "n", count: 150)
        let setup = "set -e; mkdir -p \(dir)/src/face-1 \(dir)/src/face-2; head -c 100000 /dev/urandom > \(dir)/src/face-1/pages-1.img; "
            + "echo x > \(dir)/src/face-2/'we ird \"name\".img'; echo y > \(dir)/src/face-2/\(long).img; ln -s pages-1.img \(dir)/src/face-1/l; "
            + "tar -c -f - -C \(dir)/src face-1 face-2 | gzip -1 -n > \(dir)/a.tar.gz"
        #expect(try sh(setup).0 == 0)
        let gz = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(dir)/a.tar.gz")))
        let v = try ArchiveStreamValidator(compressed: true)
        try v.feed(gz)
        try v.finish()
        #expect(v.entries == 6)
        let (status, listing) = try sh("tar -t -v --quoting-style=c -z -f \(dir)/a.tar.gz")
        #expect(status == 0)
        #expect(try TarListingValidator.validate(String(decoding: listing, as: UTF8.self)) == 6)
    }
}
