import ArgumentParser
import Foundation
import Testing
@testable import MigPlanCLI

/// `--help` is user interface: a change to it shows in review as a change to these snapshots.
/// Regenerate with `MIGPLAN_UPDATE_SNAPSHOTS=1 swift test --filter HelpTests`.
@Suite struct HelpTests {
    static let snapshotDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Snapshots")

    static let commands: [(String, [String])] = [
        ("migplan", []),
        ("validate", ["validate"]), ("plan", ["plan"]), ("apply", ["apply"]), ("report", ["report"]),
        ("check", ["check"]), ("lab", ["lab"]), ("journal", ["journal"]), ("runs", ["runs"]),
        ("show", ["show"]), ("version", ["version"]),
    ]

    @Test(arguments: HelpTests.commands.map(\.0))
    func helpMatchesSnapshot(name: String) throws {
        let path = Self.commands.first { $0.0 == name }!.1
        let help = MigPlanCommand.helpMessage(for: try Self.commandType(path), columns: 100)
        let file = Self.snapshotDir.appendingPathComponent("help-\(name).txt")
        if ProcessInfo.processInfo.environment["MIGPLAN_UPDATE_SNAPSHOTS"] == "1" {
            try FileManager.default.createDirectory(at: Self.snapshotDir, withIntermediateDirectories: true)
            try help.write(to: file, atomically: true, encoding: .utf8)
            return
        }
        let expected = try String(contentsOf: file, encoding: .utf8)
        #expect(help == expected, "help of \(name) changed; rerun with MIGPLAN_UPDATE_SNAPSHOTS=1 if intended")
    }

    @Test func everySubcommandHasAnAbstract() {
        for sub in MigPlanCommand.configuration.subcommands {
            #expect(!sub.configuration.abstract.isEmpty, "\(sub) has no abstract")
            #expect(sub.configuration.abstract != "Not yet implemented.", "\(sub) is a placeholder")
        }
    }

    static func commandType(_ path: [String]) throws -> ParsableCommand.Type {
        var type: ParsableCommand.Type = MigPlanCommand.self
        for name in path {
            guard let sub = type.configuration.subcommands.first(where: { $0.configuration.commandName == name }) else {
                throw CocoaError(.featureUnsupported)
            }
            type = sub
        }
        return type
    }
}

@Suite struct ExitStatusTests {
    @Test func unknownSubcommandIsAUsageError() {
        #expect(throws: (any Error).self) { _ = try MigPlanCommand.parseAsRoot(["bogus"]) }
        do { _ = try MigPlanCommand.parseAsRoot(["bogus"]) } catch { #expect(MigPlanMain.isUsageError(error)) }
    }

    @Test func unknownFlagIsAUsageError() {
        do {
            _ = try MigPlanCommand.parseAsRoot(["version", "--no-such-flag"])
            Issue.record("parsing should have failed")
        } catch {
            #expect(MigPlanMain.isUsageError(error))
        }
    }

    @Test func documentedStatusesAreDistinct() {
        let all = [MigPlanExit.success, MigPlanExit.failure, MigPlanExit.usage, MigPlanExit.changed]
        #expect(Set(all).count == all.count)
        #expect(all == [0, 1, 2, 3])
    }
}
