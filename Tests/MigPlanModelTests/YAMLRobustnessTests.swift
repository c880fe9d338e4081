import Foundation
import Testing
@testable import MigPlanModel

/// Bad YAML gives a positioned error, never a crash or a hang.
@Suite struct YAMLRobustnessTests {
    func errors(_ text: String, options: PlanLoadOptions = TestSupport.options) -> [Diagnostic] {
        TestSupport.check(text, options: options).diagnostics.filter { $0.severity == .error }
    }

    func elapsed(_ body: () -> Void) -> Duration {
        ContinuousClock().measure(body)
    }

    @Test func tabInIndentationIsRefusedAtItsPosition() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "    address: 10.0.0.1", with: "\taddress: 10.0.0.1")
        let found = errors(text)
        #expect(found.count == 1)
        #expect(found.first?.line == 10)
        #expect(found.first?.column == 1)
        #expect(found.first?.message.contains("tab") == true)
    }

    @Test func duplicateKeysAreAllReportedWithBothPositions() {
        let text = TestSupport.basePlan
            .replacingOccurrences(of: "    address: 10.0.0.1\n", with: "    address: 10.0.0.1\n    address: 10.0.0.9\n")
            .replacingOccurrences(of: "    runtime: runc\n", with: "    runtime: runc\n    runtime: docker\n")
        let found = errors(text)
        #expect(TestSupport.summary(found) == ["error 11:5 hosts.a.address", "error 19:5 containers.web.runtime"])
        #expect(found.first?.message == "duplicate key \"address\" (first defined at line 10, column 5)")
    }

    @Test func unterminatedStringIsRefusedWithAPosition() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "name: base", with: "name: \"base")
        let found = errors(text)
        #expect(found.count == 1)
        #expect(found.first?.message.contains("quoted scalar") == true)
        #expect(found.first?.line ?? 0 >= 2)
    }

    @Test func fiftyMegabyteFileIsRefusedFastWithoutReadingIt() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-50mb-\(UUID().uuidString).yaml").path
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        let chunk = Data(("a: " + String(repeating: "x", count: 1021) + "\n").utf8)
        for _ in 0..<(50 * 1024) { handle.write(chunk) }
        try handle.close()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var result: PlanLoadResult?
        let time = elapsed { result = PlanLoader.load(file: path) }
        #expect(time < .milliseconds(500))
        #expect(result?.plan == nil)
        #expect(result?.diagnostics.first?.message.contains("larger than 1048576 bytes") == true)
    }

    @Test func binaryGarbageIsRefusedAsNotText() {
        // Random bytes fail at their first offending byte, whatever it is (control byte, invalid
        // UTF-8, or a tab that happens to start a line): always refused, never a crash.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let bytes = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let result = PlanLoader.load(contents: bytes, file: "garbage.bin", directory: "/")
            #expect(result.plan == nil)
            #expect(result.diagnostics.contains { $0.severity == .error })
        }
        // Where the first offending byte is a NUL or a byte that cannot start UTF-8, the message says so.
        var nul = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 151 &+ 7) }
        nul[0] = 0
        let nulMessage = PlanLoader.load(contents: nul, file: "garbage.bin", directory: "/").diagnostics.first?.message ?? ""
        #expect(nulMessage.contains("binary"))
        var notUTF8 = nul
        notUTF8[0] = 0xFF
        let utf8Message = PlanLoader.load(contents: notUTF8, file: "garbage.bin", directory: "/").diagnostics.first?.message ?? ""
        #expect(utf8Message.contains("UTF-8"))
    }

    @Test func invalidUTF8IsRefusedAtItsLineAndColumn() {
        let bytes = Array("apiVersion: migplan/v1\nname: b".utf8) + [0xC3, 0x28] + Array("\n".utf8)
        let result = PlanLoader.load(contents: bytes, file: "bad.yaml", directory: "/")
        #expect(result.diagnostics.first?.line == 2)
        #expect(result.diagnostics.first?.column == 8)
        #expect(result.diagnostics.first?.message.contains("invalid UTF-8") == true)
    }

    @Test func deepNestingIsRefusedWithoutCrashing() {
        for text in [String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000),
                     String(repeating: "{a: ", count: 100_000) + "1" + String(repeating: "}", count: 100_000),
                     (0..<200).map { String(repeating: " ", count: $0) + "k:\n" }.joined() + String(repeating: " ", count: 200) + "v\n",
                     String(repeating: "- ", count: 50_000) + "x\n"] {
            var found: [Diagnostic] = []
            let time = elapsed { found = errors(text) }
            #expect(found.count == 1)
            #expect(time < .seconds(2))
        }
    }

    @Test func billionLaughsAliasBombFailsFast() {
        var text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for level in 1...9 {
            let previous = "*a\(level - 1)"
            text += "a\(level): &a\(level) [\(Array(repeating: previous, count: 9).joined(separator: ", "))]\n"
        }
        var found: [Diagnostic] = []
        let time = elapsed { found = errors(text) }
        #expect(time < .seconds(1))
        #expect(found.count == 1)
        #expect(found.first?.message.contains("alias bomb") == true)
    }

    @Test func aliasBombUsedAsMappingKeyFailsFast() {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x]\n"
        for level in 1...6 {
            text += "a\(level): &a\(level) [\(Array(repeating: "*a\(level - 1)", count: 8).joined(separator: ", "))]\n"
        }
        text += "? *a6\n: boom\n"
        var found: [Diagnostic] = []
        let time = elapsed { found = errors(text) }
        #expect(time < .seconds(1))
        #expect(!found.isEmpty)
    }

    @Test func secondDocumentIsRefused() {
        let found = errors(TestSupport.basePlan + "---\nname: other\n")
        #expect(found.count == 1)
        #expect(found.first?.line == 24)
        #expect(found.first?.message.contains("exactly one YAML document") == true)
    }

    @Test func emptyFileIsRefused() {
        #expect(errors("").first?.message.contains("empty") == true)
        #expect(errors("# only a comment\n").first?.message.contains("empty") == true)
    }

    @Test func undefinedAliasIsRefusedAtItsPosition() {
        let found = errors("name: *nowhere\n")
        #expect(found.first?.line == 1)
        #expect(found.first?.message.contains("alias") == true)
    }

    @Test func nonScalarKeysAreRefused() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "  a:\n", with: "  [a]:\n")
        #expect(errors(text).contains { $0.message.contains("mapping keys must be plain strings") })
    }

    @Test func randomByteFuzzNeverCrashesOrHangs() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("{}[]&*!|>-?:,#'\" \n\tab01%@`".utf8)
        let time = elapsed {
            for _ in 0..<300 {
                let bytes = (0..<200).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] }
                _ = PlanLoader.load(contents: bytes, file: "fuzz.yaml", directory: "/")
            }
        }
        #expect(time < .seconds(10))
    }
}
