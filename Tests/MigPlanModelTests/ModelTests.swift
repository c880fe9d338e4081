import Foundation
import Testing
@testable import MigPlanModel

@Suite struct ModelTests {
    @Test func defaultsMatchThePaperAndTheDocs() throws {
        let plan = try #require(TestSupport.check(TestSupport.basePlan).plan)
        #expect(plan.ssh.ciphers == ["aes256-ctr"])
        #expect(plan.ssh.kex == ["diffie-hellman-group-exchange-sha256"])
        #expect(plan.ssh.macs == ["hmac-sha2-256"])
        #expect(plan.ssh.hostKeyTypes == ["ssh-ed25519"])
        #expect(plan.ssh.connectTimeout == .seconds(10))
        let host = try #require(plan.host(named: "a"))
        #expect(host.port == 22 && host.user == "root")
        #expect(host.runtime.workDir == "/var/lib/migplan")
        let container = try #require(plan.container(named: "web"))
        #expect(container.source == .runcBundle(path: "/var/lib/migplan/bundles/web"))
        let migration = plan.migrations[0]
        #expect(migration.flow == .stateful)
        #expect(migration.transfer.compression == .zlib(level: 1))
        #expect(migration.transfer.archive == .single)
        #expect(migration.transfer.path == .relay)
        #expect(migration.retry.attempts == 3)
        #expect(migration.onFailure == .rollback)
        #expect(plan.journal == nil)
    }

    @Test func marksPointAtTheFieldValues() throws {
        let plan = try #require(TestSupport.check(TestSupport.basePlan, file: "p.yaml").plan)
        let host = try #require(plan.host(named: "b"))
        #expect(host.mark == Mark(file: "p.yaml", line: 12, column: 3))
        #expect(host.marks["key"] == Mark(file: "p.yaml", line: 14, column: 10))
        #expect(plan.migrations[0].marks["containers[0]"] == Mark(file: "p.yaml", line: 21, column: 18))
        #expect(plan.migrations[0].marks["unwritten"] == plan.migrations[0].mark)
    }

    @Test func durationsParseAndFormat() {
        #expect(parseDuration("500ms") == .milliseconds(500))
        #expect(parseDuration("10s") == .seconds(10))
        #expect(parseDuration("2m") == .seconds(120))
        #expect(parseDuration("1h") == .seconds(3600))
        for bad in ["10", "s", "1.5s", "-1s", "10 s", "1d", "9999999999s"] { #expect(parseDuration(bad) == nil, "\(bad)") }
        #expect(formatDuration(.milliseconds(1500)) == "1500ms")
        #expect(formatDuration(.seconds(120)) == "2m")
    }

    @Test func retryBackoffDoublesUpToTheMaximum() {
        let retry = RetryPolicy(attempts: 6, initialBackoff: .seconds(1), maxBackoff: .seconds(5), marks: FieldMarks(node: Mark(file: "", line: 1, column: 1)))
        #expect((1...6).map { retry.backoff(beforeAttempt: $0) } == [.zero, .seconds(1), .seconds(2), .seconds(4), .seconds(5), .seconds(5)])
    }

    @Test func sslModesAreOrderedByStrength() {
        #expect(SSLMode.require < SSLMode.verifyCA)
        #expect(!SSLMode.require.verifiesServer)
        #expect(SSLMode.verifyFull.verifiesServer)
    }

    @Test func conninfoHasNoPasswordAndQuotesValues() {
        let journal = Journal(host: "10.77.0.1", port: 5433, dbname: "mig plan", user: "o'brien", sslrootcert: "/a\\b",
                              passwordEnv: "PW", marks: FieldMarks(node: Mark(file: "", line: 1, column: 1)))
        #expect(journal.conninfoWithoutPassword
                == "host='10.77.0.1' port='5433' dbname='mig plan' user='o\\'brien' sslmode='verify-full' connect_timeout='10' sslrootcert='/a\\\\b'")
        #expect(!journal.conninfoWithoutPassword.contains("password"))
    }

    @Test func knownHostsNameUsesBracketsForOtherPorts() {
        let mark = FieldMarks(node: Mark(file: "", line: 1, column: 1))
        #expect(Host(name: "a", address: "10.0.0.1", key: "k", marks: mark).knownHostsName == "10.0.0.1")
        #expect(Host(name: "a", address: "10.0.0.1", port: 2222, key: "k", marks: mark).knownHostsName == "[10.0.0.1]:2222")
    }

    @Test func everyWeakAlgorithmOfTheIssueIsRecognised() {
        for name in ["3des-cbc", "arcfour", "arcfour128", "arcfour256", "blowfish-cbc", "cast128-cbc", "aes128-cbc",
                     "aes256-cbc", "rijndael-cbc@lysator.liu.se", "hmac-md5", "hmac-md5-96", "hmac-md5-etm@openssh.com",
                     "hmac-sha1", "hmac-sha1-96", "hmac-sha1-etm@openssh.com", "diffie-hellman-group1-sha1",
                     "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1", "ssh-dss", "ssh-rsa"] {
            #expect(WeakAlgorithms.isWeak(name), "\(name)")
        }
        for name in ["aes256-ctr", "aes128-ctr", "hmac-sha2-256", "hmac-sha2-512", "diffie-hellman-group-exchange-sha256",
                     "diffie-hellman-group14-sha256", "curve25519-sha256", "ssh-ed25519", "ecdsa-sha2-nistp256"] {
            #expect(!WeakAlgorithms.isWeak(name), "\(name)")
        }
    }

    @Test func everyWeakAlgorithmIsRefusedInPlansAtItsPosition() {
        let weak: [(String, String)] = [
            ("ciphers", "3des-cbc"), ("ciphers", "arcfour"), ("ciphers", "arcfour128"), ("ciphers", "blowfish-cbc"),
            ("ciphers", "cast128-cbc"), ("ciphers", "aes128-cbc"), ("ciphers", "aes256-cbc"),
            ("macs", "hmac-md5"), ("macs", "hmac-md5-96"), ("macs", "hmac-sha1"), ("macs", "hmac-sha1-96"),
            ("kex", "diffie-hellman-group1-sha1"), ("kex", "diffie-hellman-group14-sha1"),
            ("kex", "diffie-hellman-group-exchange-sha1"), ("hostKeyTypes", "ssh-dss"), ("hostKeyTypes", "ssh-rsa"),
        ]
        for (field, name) in weak {
            let text = TestSupport.basePlan.replacingOccurrences(of: "  knownHosts: known_hosts\n",
                                                                  with: "  knownHosts: known_hosts\n  \(field): [aes256-ctr-placeholder, \(name)]\n")
                .replacingOccurrences(of: "aes256-ctr-placeholder", with: SSHSettings().defaultFor(field))
            let found = TestSupport.check(text).diagnostics.filter { $0.severity == .error }
            let column = 2 + field.count + 4 + SSHSettings().defaultFor(field).count + 2
            #expect(TestSupport.summary(found) == ["error 5:\(column) ssh.\(field)[1]"], "\(name)")
            #expect(found.first?.message.contains("weak") == true, "\(name)")
        }
    }

    @Test func weakAlgorithmsAllowedExplicitlyAreWarnings() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "  knownHosts: known_hosts\n",
                                                              with: "  knownHosts: known_hosts\n  macs: [hmac-sha1]\n  allowWeakAlgorithms: true\n")
        let diagnostics = TestSupport.check(text).diagnostics
        #expect(TestSupport.summary(diagnostics) == ["warning 5:10 ssh.macs[0]"])
    }

    @Test func customCatalogDecidesWhichNamesAreKnown() throws {
        let catalog = AlgorithmCatalog(source: "test", names: [.cipher: ["aes128-ctr"], .kex: SSHSettings.defaultKex,
                                                               .mac: SSHSettings.defaultMacs, .hostKey: SSHSettings.defaultHostKeyTypes])
        let plan = try #require(TestSupport.check(TestSupport.basePlan).plan)
        let found = PlanValidator(catalog: catalog, fileChecks: .never).validate(plan)
        #expect(TestSupport.summary(found) == ["error 4:3 ssh.ciphers[0]"])
        #expect(found.first?.message.contains("unknown cipher \"aes256-ctr\": test supports aes128-ctr") == true)
    }

    @Test func diagnosticsPrintAsFileLineColumnSeverityPathMessage() throws {
        let diagnostic = Diagnostic(.error, at: Mark(file: "plans/x.yaml", line: 12, column: 5), path: "hosts.instance2.key", "unknown key \"ops\"")
        #expect(diagnostic.description == "plans/x.yaml:12:5: error: hosts.instance2.key: unknown key \"ops\"")
        let json = String(decoding: try JSONEncoder().encode(diagnostic), as: UTF8.self)
        for field in ["\"file\"", "\"line\"", "\"column\"", "\"severity\"", "\"path\"", "\"message\""] { #expect(json.contains(field)) }
    }

    @Test func validatorNeverEchoesEnvironmentValues() {
        let text = TestSupport.basePlan.replacingOccurrences(of: "    path: id_ed25519\n", with: "    path: id_ed25519\n    passphraseEnv: OPS_PASSPHRASE\n")
        var options = TestSupport.options
        options.environment["OPS_PASSPHRASE"] = "s3cret-value"
        let diagnostics = TestSupport.check(text, options: options).diagnostics
        #expect(!diagnostics.map(\.description).joined().contains("s3cret-value"))
    }
}

extension SSHSettings {
    init() { self.init(knownHosts: "", marks: FieldMarks(node: Mark(file: "", line: 1, column: 1))) }
    func defaultFor(_ field: String) -> String {
        switch field {
        case "ciphers": ciphers[0]
        case "kex": kex[0]
        case "macs": macs[0]
        default: hostKeyTypes[0]
        }
    }
}
