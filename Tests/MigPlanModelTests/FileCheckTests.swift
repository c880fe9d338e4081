import Foundation
import Testing
@testable import MigPlanModel

/// Checks of the controller's local files, in a temporary directory.
@Suite final class FileCheckTests {
    let directory: String

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-files-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func write(_ name: String, _ text: String, mode: Int = 0o600) throws {
        let path = directory + "/" + name
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }

    func check(_ plan: String = TestSupport.basePlan, mode: FileCheckMode) throws -> ValidationReport {
        try write("plan.yaml", plan, mode: 0o644)
        return PlanValidator(fileChecks: mode).check(file: directory + "/plan.yaml", options: TestSupport.options)
    }

    let knownHosts = "10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n10.0.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n"

    @Test func presentFilesWithGoodModesPass() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", knownHosts, mode: 0o644)
        let report = try check(mode: .always)
        #expect(report.isValid, "\(report.diagnostics)")
        #expect(report.skippedFileChecks.isEmpty)
    }

    @Test func keyReadableByOthersIsAnError() throws {
        try write("id_ed25519", "key", mode: 0o644)
        try write("known_hosts", knownHosts)
        let report = try check(mode: .whenPresent)
        #expect(TestSupport.summary(report.diagnostics) == ["error 7:11 keys.ops.path"])
        #expect(report.diagnostics.first?.message.contains("chmod 600") == true)
    }

    @Test func knownHostsLackingAHostIsAnErrorAtTheHostAddress() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "10.0.0.1 ssh-ed25519 AAAA\n# 10.0.0.2 commented out\n")
        let report = try check(mode: .whenPresent)
        #expect(TestSupport.summary(report.diagnostics) == ["error 13:14 hosts.b.address"])
        #expect(report.diagnostics.first?.message.contains("ssh-keyscan") == true)
    }

    /// Entries hashed by OpenSSH (`ssh-keygen -H`, Debian's `HashKnownHosts yes`) are matched.
    @Test func hashedKnownHostsEntriesAreMatched() throws {
        let a = "|1|aF6guKkGJpFf/wXRZxYeZidKupA=|vfX7ygpgbF+OLhyiHGd73Nzz6Tk= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n"
        let b = "|1|BFyFDwiWWjQqHBG//yFbizcq/xA=|1FKY67KamPm/7F/pDqRcSt3RYiY= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n"
        let other = "|1|NbUI9vV//MDZIioz4uP4nioKz4w=|aYCHJYXnC0vV8qhnr7+tcMbBU+8= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC\n"
        try write("id_ed25519", "key")
        try write("known_hosts", a + b)
        let report = try check(mode: .always)
        #expect(report.isValid && report.diagnostics.isEmpty, "\(report.diagnostics)")
        // A hashed entry for another address (10.0.0.9) does not stand for 10.0.0.2.
        try write("known_hosts", a + other)
        let missing = try check(mode: .always)
        #expect(TestSupport.summary(missing.diagnostics) == ["error 13:14 hosts.b.address"])
    }

    @Test func nonStandardPortsUseTheBracketForm() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "[10.0.0.1]:2222 ssh-ed25519 AAAA\n10.0.0.2 ssh-ed25519 AAAA\n")
        let plan = TestSupport.basePlan.replacingOccurrences(of: "    address: 10.0.0.1\n", with: "    address: 10.0.0.1\n    port: 2222\n")
        #expect(try check(plan, mode: .always).isValid)
        try write("known_hosts", "10.0.0.1 ssh-ed25519 AAAA\n10.0.0.2 ssh-ed25519 AAAA\n")
        try write("id_ed25519", "key")
        let report = try check(plan, mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 10:14 hosts.a.address"])
        #expect(report.diagnostics.first?.message.contains("[10.0.0.1]:2222") == true)
    }

    @Test func knownHostsWithOnlyOtherKeyTypesIsAnError() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "10.0.0.1 ssh-rsa AAAA\n10.0.0.2 ssh-ed25519 AAAA\n")
        let report = try check(mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 10:14 hosts.a.address"])
    }

    @Test func missingFilesAreSkippedAndSaySoUnlessRequired() throws {
        let skipped = try check(mode: .whenPresent)
        #expect(skipped.isValid)
        #expect(skipped.skippedFileChecks.count == 2)
        #expect(skipped.diagnostics.allSatisfy { $0.severity == .note && $0.message.contains("skipped") })
        let required = try check(mode: .always)
        #expect(!required.isValid)
        #expect(TestSupport.summary(required.diagnostics) == ["error 4:15 ssh.knownHosts", "error 7:11 keys.ops.path"])
    }

    @Test func missingCACertificateIsReportedAtSslrootcert() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", knownHosts)
        let plan = TestSupport.basePlan + "journal:\n  host: 10.0.0.100\n  dbname: migplan\n  user: migplan\n  sslrootcert: ca.crt\n"
        let report = try check(plan, mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 28:16 journal.sslrootcert"])
    }
}
