import Foundation
import Testing
@testable import MigPlanModel

/// Rules added after the first review: secrets never echoed, host paths safe for shell commands,
/// terminal-safe diagnostics, symbolic links followed for key checks and `..`.
@Suite final class HardeningTests {
    let directory: String

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("migplan-hardening-\(UUID().uuidString)").path
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

    func check(_ plan: String, mode: FileCheckMode, environment: [String: String] = TestSupport.environment) throws -> ValidationReport {
        try write("plan.yaml", plan, mode: 0o644)
        return PlanValidator(fileChecks: mode).check(file: directory + "/plan.yaml",
                                                     options: PlanLoadOptions(environment: environment))
    }

    static func everything(_ report: ValidationReport) -> String {
        (report.diagnostics.map(\.description) + report.skippedFileChecks).joined(separator: "\n")
    }

    // MARK: secrets (review item 6)

    @Test func pathsUsingVariablesAreShownUnexpandedSoTheirValuesNeverAppear() throws {
        let secret = "s3cr3t-pw"
        let plan = TestSupport.basePlan
            .replacingOccurrences(of: "path: id_ed25519", with: "path: /keys/${MY_DB_PASSWORD}")
            .replacingOccurrences(of: "knownHosts: known_hosts", with: "knownHosts: /kh/${MY_DB_PASSWORD}")
            + "journal:\n  host: 10.0.0.9\n  dbname: d\n  user: u\n  sslrootcert: /ca/${MY_DB_PASSWORD}.crt\n"
        let environment = TestSupport.environment.merging(["MY_DB_PASSWORD": secret]) { $1 }
        for mode in [FileCheckMode.always, .whenPresent] {
            let report = try check(plan, mode: mode, environment: environment)
            let text = Self.everything(report)
            #expect(!text.contains(secret), "\(text)")
            #expect(text.contains("key file /keys/${MY_DB_PASSWORD}"), "\(text)")
            #expect(text.contains("/kh/${MY_DB_PASSWORD}"), "\(text)")
            #expect(text.contains("/ca/${MY_DB_PASSWORD}.crt"), "\(text)")
            // The plan itself still uses the expanded path.
            #expect(report.plan?.keys.first?.path == "/keys/\(secret)")
        }
    }

    @Test func pathsWithoutVariablesAreShownResolved() throws {
        let report = try check(TestSupport.basePlan, mode: .always)
        #expect(Self.everything(report).contains("key file \(directory)/id_ed25519 does not exist"))
    }

    @Test func aSecretWrittenAsPassphraseOrPasswordVariableNameIsNeverEchoed() {
        let plan = TestSupport.basePlan.replacingOccurrences(
            of: "path: id_ed25519", with: "path: id_ed25519\n    passphraseEnv: \"hunter2-secret!\"")
            + "journal:\n  host: 10.0.0.9\n  dbname: d\n  user: u\n  passwordEnv: 'pg pass 42'\n"
        let (_, diagnostics) = TestSupport.check(plan)
        #expect(TestSupport.summary(diagnostics) == ["error 8:20 keys.ops.passphraseEnv", "error 29:16 journal.passwordEnv"])
        let text = diagnostics.map(\.description).joined(separator: "\n")
        #expect(!text.contains("hunter2"), "\(text)")
        #expect(!text.contains("pg pass"), "\(text)")
        #expect(text.contains("write the variable's NAME"))
    }

    // MARK: host paths (review item 7)

    @Test(arguments: [
        "/var/lib/../../etc", "/", "/tmp/x; rm -rf / #", "/a/./b", "/a//b", "/a/b/", "/a b", "/a'b", "/a\"b",
        "/a\nb", "/a\\b", "/a$(id)", "relative/path", "/etc", "/var/lib", "/usr", "/run", "/home", "/root",
    ])
    func unsafeHostDirectoriesAreRefused(path: String) {
        #expect(hostPathProblem(path) != nil)
    }

    @Test(arguments: ["/var/lib/migplan", "/srv/migplan-test", "/var/lib/migplan/bundles/face", "/run/runc", "/a/.hidden", "/a/..b"])
    func plainHostDirectoriesAreAccepted(path: String) {
        #expect(hostPathProblem(path) == nil)
    }

    // MARK: terminal safety (n1)

    @Test func controlCharactersInDiagnosticsArePrintedEscaped() {
        let escape = "x\u{1B}[2J\u{1B}[1;1Hfake.yaml: valid"
        let plan = TestSupport.basePlan.replacingOccurrences(of: "key: ops\n  b:", with: "key: \"\\e[2Jops\"\n  b:")
        let (_, diagnostics) = TestSupport.check(plan)
        let text = diagnostics.map(\.description).joined(separator: "\n")
        #expect(!diagnostics.isEmpty)
        #expect(!text.unicodeScalars.contains("\u{1B}"), "\(text)")
        #expect(text.contains("\\u{1B}[2Jops"), "\(text)")
        let diagnostic = Diagnostic(file: "p\u{7}.yaml", line: 1, column: 2, severity: .error, path: "containers.\(escape)", message: "m\u{202E}x\\")
        #expect(diagnostic.description == "p\\u{7}.yaml:1:2: error: containers.x\\u{1B}[2J\\u{1B}[1;1Hfake.yaml: valid: m\\u{202E}x\\\\")
        #expect(Diagnostic.escapingNonPrintables("plain\\text é") == "plain\\text é")
    }

    // MARK: key files behind symbolic links (n3)

    @Test func aSymlinkedKeyIsJudgedByItsTargetsModeNotTheLinks() throws {
        try write("real_key", "key", mode: 0o600)
        try FileManager.default.createSymbolicLink(atPath: directory + "/id_ed25519", withDestinationPath: directory + "/real_key")
        let report = try check(TestSupport.basePlan, mode: .whenPresent)
        #expect(TestSupport.summary(report.diagnostics).isEmpty, "\(report.diagnostics)")
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: directory + "/real_key")
        let loose = try check(TestSupport.basePlan, mode: .whenPresent)
        #expect(TestSupport.summary(loose.diagnostics) == ["error 7:11 keys.ops.path"])
        #expect(loose.diagnostics.first { $0.severity == .error }?.message.contains("mode 640") == true, "\(loose.diagnostics)")
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"))
    func aKeyOwnedBySomeoneElseIsAnError() throws {
        try write("id_ed25519", "key", mode: 0o600)
        #expect(chown(directory + "/id_ed25519", 65534, 65534) == 0)
        let report = try check(TestSupport.basePlan, mode: .whenPresent)
        #expect(TestSupport.summary(report.diagnostics) == ["error 7:11 keys.ops.path"])
        #expect(report.diagnostics.first { $0.severity == .error }?.message.contains("owned by uid 65534") == true, "\(report.diagnostics)")
    }

    // MARK: `..` after a symbolic link (n14)

    @Test func dotDotAfterASymlinkLeavesTheLinksTargetNotTheLink() throws {
        try FileManager.default.createDirectory(atPath: directory + "/real/inner", withIntermediateDirectories: true)
        try write("real/known_hosts", "x")
        try FileManager.default.createSymbolicLink(atPath: directory + "/link", withDestinationPath: directory + "/real/inner")
        let expander = PathExpander(environment: [:], homeDirectory: nil)
        let resolved = try expander.expand("link/../known_hosts", relativeTo: directory)
        let real = try #require(realpath(directory + "/real/known_hosts", nil))
        defer { free(real) }
        // What the kernel opens for DIR/link/../known_hosts.
        #expect(resolved == String(cString: real))
        #expect(FileManager.default.fileExists(atPath: resolved))
        // Without links `..` stays lexical.
        #expect(try expander.expand("a/b/../c", relativeTo: "/nonexistent") == "/nonexistent/a/c")
    }

    // MARK: known_hosts markers and patterns (n4)

    @Test func knownHostsPatternsFollowOpenSSHsMatching() {
        #expect(KnownHosts.matches("10.0.0.1", ["10.0.0.*"]))
        #expect(KnownHosts.matches("10.0.0.1", ["10.0.0.?"]))
        #expect(!KnownHosts.matches("10.0.0.12", ["10.0.0.?"]))
        #expect(!KnownHosts.matches("10.0.0.1", ["10.0.0.*", "!10.0.0.1"]))
        #expect(!KnownHosts.matches("10.0.0.1", ["!10.0.0.1"]))
        #expect(KnownHosts.matches("[10.0.0.1]:2222", ["[10.0.0.1]:2222"]))
        #expect(!KnownHosts.matches("[10.0.0.1]:2222", ["10.0.0.1"]))
        #expect(KnownHosts.matches("Host.Example", ["*.example"]))
    }

    @Test func wildcardEntriesCountAndNegatedOnesDoNot() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "10.0.0.* ssh-ed25519 AAAAwild\n")
        #expect(try check(TestSupport.basePlan, mode: .always).isValid)
        try write("known_hosts", "10.0.0.*,!10.0.0.2 ssh-ed25519 AAAAwild\n")
        let report = try check(TestSupport.basePlan, mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 13:14 hosts.b.address"])
    }

    @Test func certAuthorityLinesAreNotHostKeys() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "10.0.0.1 ssh-ed25519 AAAAone\n@cert-authority 10.0.0.2 ssh-ed25519 AAAAca\n")
        let report = try check(TestSupport.basePlan, mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 13:14 hosts.b.address"])
    }

    @Test func aHostWhoseOnlyKeyIsRevokedIsNotKnown() throws {
        try write("id_ed25519", "key")
        try write("known_hosts", "10.0.0.1 ssh-ed25519 AAAAone\n10.0.0.2 ssh-ed25519 AAAAold\n@revoked * ssh-ed25519 AAAAold\n")
        let report = try check(TestSupport.basePlan, mode: .always)
        #expect(TestSupport.summary(report.diagnostics) == ["error 13:14 hosts.b.address"])
        #expect(report.diagnostics.first { $0.severity == .error }?.message.contains("@revoked") == true, "\(report.diagnostics)")
        // Another, unrevoked key for the host is enough.
        try write("known_hosts", "10.0.0.1 ssh-ed25519 AAAAone\n10.0.0.2 ssh-ed25519 AAAAold\n10.0.0.2 ssh-ed25519 AAAAnew\n@revoked * ssh-ed25519 AAAAold\n")
        #expect(try check(TestSupport.basePlan, mode: .always).isValid)
    }

    // MARK: copy-paste suggestions (n13)

    @Test func suggestedCommandsQuoteTheirArguments() {
        #expect(PlanValidator.shellWord("/plain/path") == "/plain/path")
        #expect(PlanValidator.shellWord("/my keys/it's") == "'/my keys/it'\\''s'")
        #expect(PlanValidator.shellWord("${KEYS}/id") == "\"${KEYS}/id\"")
        #expect(PlanValidator.shellWord("${KEYS}/$(id)") == "'${KEYS}/$(id)'")
    }

    @Test func theKeyscanSuggestionQuotesAKnownHostsPathWithSpaces() throws {
        try write("id_ed25519", "key")
        try write("known hosts", "10.0.0.1 ssh-ed25519 AAAA\n")
        let plan = TestSupport.basePlan.replacingOccurrences(of: "knownHosts: known_hosts", with: "knownHosts: known hosts")
        let report = try check(plan, mode: .always)
        let message = try #require(report.diagnostics.first { $0.severity == .error }?.message)
        #expect(message.contains("ssh-keyscan -t ed25519 10.0.0.2 >> '\(directory)/known hosts'"), "\(message)")
    }
}
