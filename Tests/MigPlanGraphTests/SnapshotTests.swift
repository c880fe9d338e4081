import Foundation
import MigPlanGraph
import MigPlanModel
import Testing

/// The rendered graphs of the repository's plans (`plans/*.yaml`) are kept in `Snapshots/`
/// (`NAME.txt`, `NAME.json`, `NAME.dot`), so a change to the compiler or a plan shows in review.
/// `MIGPLAN_UPDATE_SNAPSHOTS=1 swift test --filter SnapshotTests` rewrites them.
@Suite("Graph snapshots of the repository's plans")
struct SnapshotTests {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let snapshotsDirectory = testsDirectory.appendingPathComponent("Snapshots")
    static let repositoryRoot = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    static let plansDirectory = repositoryRoot.appendingPathComponent("plans")

    static var planNames: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: plansDirectory.path)) ?? []
        return names.filter { $0.hasSuffix(".yaml") }.sorted()
    }

    static func compile(_ name: String) throws -> StepGraph {
        let bytes = try [UInt8](Data(contentsOf: plansDirectory.appendingPathComponent(name)))
        let loaded = PlanLoader.load(contents: bytes, file: "plans/\(name)", directory: plansDirectory.path,
                                     options: PlanLoadOptions(environment: [:], homeDirectory: "/nonexistent"))
        let plan = try #require(loaded.plan, "plans/\(name) does not load: \(loaded.diagnostics)")
        let errors = (loaded.diagnostics + PlanValidator(fileChecks: .never).validate(plan)).filter { $0.severity == .error }
        #expect(errors.isEmpty, "plans/\(name) is invalid: \(errors)")
        return try PlanCompiler.compile(plan)
    }

    static func assertSnapshot(_ actual: String, named file: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let url = snapshotsDirectory.appendingPathComponent(file)
        if ProcessInfo.processInfo.environment["MIGPLAN_UPDATE_SNAPSHOTS"] == "1" {
            try FileManager.default.createDirectory(at: snapshotsDirectory, withIntermediateDirectories: true)
            try Data(actual.utf8).write(to: url)
            return
        }
        guard let expected = try? String(contentsOf: url, encoding: .utf8) else {
            Issue.record("missing snapshot Snapshots/\(file); run MIGPLAN_UPDATE_SNAPSHOTS=1 swift test --filter SnapshotTests",
                         sourceLocation: sourceLocation)
            return
        }
        if actual != expected {
            let actualLines = actual.split(separator: "\n", omittingEmptySubsequences: false)
            let expectedLines = expected.split(separator: "\n", omittingEmptySubsequences: false)
            let first = Array(zip(actualLines, expectedLines)).firstIndex { $0.0 != $0.1 } ?? min(actualLines.count, expectedLines.count)
            let got = first < actualLines.count ? String(actualLines[first]) : "<end>"
            let want = first < expectedLines.count ? String(expectedLines[first]) : "<end>"
            Issue.record("""
                Snapshots/\(file) differs at line \(first + 1):
                  expected: \(want)
                  actual:   \(got)
                If the change is intended: MIGPLAN_UPDATE_SNAPSHOTS=1 swift test --filter SnapshotTests
                """, sourceLocation: sourceLocation)
        }
    }

    @Test func theRepositoryHasThePlansTheIssueAsksFor() {
        for name in ["clock-stateless.yaml", "face-stateful.yaml", "face-multiuser.yaml"] {
            #expect(Self.planNames.contains(name), "plans/\(name) is missing")
        }
    }

    @Test(arguments: SnapshotTests.planNames)
    func renderedGraphsMatchTheirSnapshots(plan name: String) throws {
        let graph = try Self.compile(name)
        let base = String(name.dropLast(".yaml".count))
        try Self.assertSnapshot(graph.rendered(as: .text), named: "\(base).txt")
        try Self.assertSnapshot(graph.rendered(as: .json), named: "\(base).json")
        try Self.assertSnapshot(graph.rendered(as: .dot), named: "\(base).dot")
    }

    @Test(arguments: SnapshotTests.planNames)
    func jsonRenderingDecodesBackToTheSameGraph(plan name: String) throws {
        let graph = try Self.compile(name)
        #expect(try StepGraph.decodeJSON(Data(graph.rendered(as: .json).utf8)) == graph)
    }

    @Test func multiUserPlanCompilesToFourCheckpointsOneArchiveFourRestores() throws {
        let graph = try Self.compile("face-multiuser.yaml")
        #expect(graph.ids(ofKind: "checkpoint").count == 4)
        #expect(graph.ids(ofKind: "archive").count == 1)
        #expect(graph.ids(ofKind: "restore").count == 4)
        #expect(graph.rollbacks.count == 4)
    }
}
