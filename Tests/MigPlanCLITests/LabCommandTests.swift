import ArgumentParser
import Foundation
import Testing
@testable import MigPlanCLI

@Suite struct LabCommandTests {
    @Test func upPassesHostCountsToTheScript() throws {
        let up = try LabCommand.Up.parse(["--hosts", "3", "--docker-hosts", "1"])
        #expect(up.scriptArguments == ["up", "--hosts", "3", "--docker-hosts", "1"])
        #expect(try LabCommand.Up.parse([]).scriptArguments == ["up"])
    }

    @Test func upRefusesHostCountsOutsideOneToEight() {
        #expect(throws: (any Error).self) { try LabCommand.Up.parse(["--hosts", "9"]) }
        #expect(throws: (any Error).self) { try LabCommand.Up.parse(["--hosts", "0"]) }
        #expect(throws: (any Error).self) { try LabCommand.Up.parse(["--docker-hosts", "-1"]) }
    }

    @Test func downPassesPurge() throws {
        #expect(try LabCommand.Down.parse([]).scriptArguments == ["down"])
        #expect(try LabCommand.Down.parse(["--purge"]).scriptArguments == ["down", "--purge"])
        #expect(try LabCommand.Down.parse(["--force"]).scriptArguments == ["down", "--force"])
        #expect(try LabCommand.Down.parse(["--purge", "--force"]).scriptArguments == ["down", "--purge", "--force"])
    }

    @Test func execPassesTheCommandVerbatimAfterTheHost() throws {
        let exec = try LabCommand.Exec.parse(["instance2", "--", "ls", "-l", "--all", "/var/lib/migplan"])
        #expect(exec.scriptArguments == ["exec", "instance2", "--", "ls", "-l", "--all", "/var/lib/migplan"])
        #expect(try LabCommand.Exec.parse(["instance1"]).scriptArguments == ["exec", "instance1", "--"])
    }

    @Test func execRefusesUnknownHosts() {
        for name in ["instance0", "instance9", "instance01", "host1", "instance", "instance1x"] {
            #expect(throws: (any Error).self) { try LabCommand.Exec.parse([name, "--", "true"]) }
        }
    }

    @Test func labIsReachableFromTheRootCommand() throws {
        let command = try MigPlanCommand.parseAsRoot(["lab", "status"])
        #expect(command is LabCommand.Status)
    }

    @Test func scriptsDirectoryFromEnvironmentWins() {
        let found = LabScript.locate(
            environment: ["MIGPLAN_SCRIPTS_DIR": "/opt/migplan/scripts"],
            executablePath: "/repo/.build/debug/migplan",
            currentDirectory: "/repo",
            isExecutable: { _ in true })
        #expect(found == "/opt/migplan/scripts/lab")
    }

    @Test func scriptIsFoundInTheCheckoutHoldingTheExecutable() {
        let found = LabScript.locate(
            environment: [:],
            executablePath: "/work/main/.build-x/x86_64-unknown-linux-gnu/debug/migplan",
            currentDirectory: "/elsewhere",
            isExecutable: { $0 == "/work/main/scripts/lab" })
        #expect(found == "/work/main/scripts/lab")
    }

    @Test func scriptFallsBackToTheCurrentDirectorysCheckout() {
        let found = LabScript.locate(
            environment: [:],
            executablePath: "/usr/local/bin/migplan",
            currentDirectory: "/work/main/plans",
            isExecutable: { $0 == "/work/main/scripts/lab" })
        #expect(found == "/work/main/scripts/lab")
    }

    @Test func missingScriptIsReportedAsNotFound() {
        let found = LabScript.locate(
            environment: [:], executablePath: "/usr/bin/migplan", currentDirectory: "/tmp",
            isExecutable: { _ in false })
        #expect(found == nil)
    }
}
