import Foundation
@testable import MigPlanJournal
import MigPlanBasics
import Testing

@Suite struct JournalConfigTests {
    @Test func defaultsToVerifyFull() {
        let c = JournalConfig(host: "10.77.0.1", port: 5433)
        #expect(c.sslMode == .verifyFull)
        let p = Dictionary(uniqueKeysWithValues: c.connectionParameters(password: nil))
        #expect(p["sslmode"] == "verify-full")
        #expect(p["password"] == nil)
        #expect(p["host"] == "10.77.0.1")
        #expect(p["port"] == "5433")
    }

    @Test func sslModeWeakerThanRequiredIsRefusedBeforeConnecting() async {
        var c = JournalConfig(host: "192.0.2.1", sslMode: .require, minimumSSLMode: .verifyCA)
        #expect(throws: JournalError.self) { try c.validate() }
        do {
            _ = try await JournalConnection.connect(c, password: "pw")
            Issue.record("connect should refuse")
        } catch let e as JournalError {
            #expect(e.code == .config)
            #expect(e.description.contains("weaker"))
        } catch {
            Issue.record("unexpected \(error)")
        }
        c.minimumSSLMode = .require
        #expect(throws: Never.self) { try c.validate() }
    }

    @Test func literalAddressIsPinnedAndTLSBelow12IsRefused() {
        let p = Dictionary(uniqueKeysWithValues: JournalConfig(host: "10.77.0.1", port: 5433).connectionParameters(password: nil))
        // hostaddr set explicitly: PGHOSTADDR in the environment cannot redirect the connection.
        #expect(p["hostaddr"] == "10.77.0.1")
        #expect(p["ssl_min_protocol_version"] == "TLSv1.2")
        let named = Dictionary(uniqueKeysWithValues: JournalConfig(host: "db.example", port: 5433).connectionParameters(password: nil))
        #expect(named["hostaddr"] == nil)
    }

    @Test func environmentThatWouldSteerTheConnectionIsRefused() throws {
        var c = JournalConfig(host: "10.77.0.1", port: 5433)
        c.sslRootCert = "/lab/ca.crt"
        #expect(throws: Never.self) { try c.checkEnvironment(["PGHOSTADDR": "127.0.0.9", "PGSSLROOTCERT": "/evil.crt"]) }
        for name in ["PGSERVICE", "PGSERVICEFILE"] {
            #expect(throws: JournalError.self) { try c.checkEnvironment([name: "x"]) }
        }
        c.sslRootCert = nil
        do {
            try c.checkEnvironment(["PGSSLROOTCERT": "/evil.crt"])
            Issue.record("PGSSLROOTCERT must be refused when the plan names no CA")
        } catch let e as JournalError {
            #expect(e.code == .config)
            #expect(e.description.contains("PGSSLROOTCERT"))
        }
        let named = JournalConfig(host: "db.example", port: 5433)
        #expect(throws: JournalError.self) { try named.checkEnvironment(["PGHOSTADDR": "127.0.0.9"]) }
    }

    @Test func sslModesAreOrdered() {
        #expect(JournalSSLMode.disable < .require)
        #expect(JournalSSLMode.verifyCA < .verifyFull)
        #expect(!JournalSSLMode.prefer.requiresTLS)
        #expect(JournalSSLMode.verifyCA.requiresTLS)
    }

    @Test func conninfoIsParsedByLibpq() throws {
        let c = try JournalConfig(conninfo: "host=10.77.0.1 port=5433 dbname=migplan user=migplan sslmode=verify-ca sslrootcert=/x/ca.crt")
        #expect(c.host == "10.77.0.1")
        #expect(c.port == 5433)
        #expect(c.sslMode == .verifyCA)
        #expect(c.sslRootCert == "/x/ca.crt")
        let uri = try JournalConfig(conninfo: "postgresql://migplan@10.77.0.1:5433/migplan?sslmode=verify-full")
        #expect(uri.port == 5433)
        #expect(uri.sslMode == .verifyFull)
        let bare = try JournalConfig(conninfo: "host=db")
        #expect(bare.sslMode == .verifyFull)
    }

    @Test func conninfoWithPasswordIsRefusedWithoutEchoingIt() {
        do {
            _ = try JournalConfig(conninfo: "host=db password=hunter2")
            Issue.record("a password in conninfo must be refused")
        } catch let e as JournalError {
            #expect(e.code == .config)
            #expect(!e.description.contains("hunter2"))
            #expect(e.description.contains("MIGPLAN_JOURNAL_PASSWORD"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func unknownOrMalformedConninfoIsRefused() {
        #expect(throws: JournalError.self) { try JournalConfig(conninfo: "host=db sslcompression=1") }
        #expect(throws: JournalError.self) { try JournalConfig(conninfo: "host=db sslmode=sometimes") }
        #expect(throws: JournalError.self) { try JournalConfig(conninfo: "host='unterminated") }
        #expect(throws: JournalError.self) { try JournalConfig(conninfo: "dbname=x") }
    }

    @Test func schemaMustBeAPlainIdentifier() {
        var c = JournalConfig(host: "db")
        c.schema = "jt_1"
        #expect(throws: Never.self) { try c.validate() }
        for bad in ["x y", "x;drop", "X", "1abc", "a-b", ""] {
            c.schema = bad
            #expect(throws: JournalError.self, "schema \(bad)") { try c.validate() }
        }
    }

    @Test func errorsNeverCarryThePassword() {
        let e = JournalError(.connection, "password authentication failed for s3cret", detail: "s3cret again", context: "x s3cret")
            .redacting("s3cret")
        #expect(!e.description.contains("s3cret"))
    }

    @Test func connectionFailuresAreRecognised() {
        #expect(JournalError(.connectionLost, "x").isConnectionFailure)
        #expect(JournalError(.query, "x", sqlstate: "57P01").isConnectionFailure)
        #expect(JournalError(.query, "x", sqlstate: "08006").isConnectionFailure)
        #expect(!JournalError(.query, "x", sqlstate: "23505").isConnectionFailure)
    }

    @Test func redactionHidesSecretsAndSecretLikeAssignments() {
        let line = "PGPASSWORD=abc MIGPLAN_TOKEN='x y' docker login -p hunter2 reg"
        let r = JournalRedaction.redact(line, secrets: ["hunter2"])
        #expect(!r.contains("abc"))
        #expect(!r.contains("x y"))
        #expect(!r.contains("hunter2"))
        #expect(r.contains("PGPASSWORD=[REDACTED]"))
        #expect(r.contains("docker login -p [REDACTED] reg"))
    }
}

@Suite struct RunRecordTests {
    @Test func planFileDigestAndGitCommitAreRecorded() throws {
        // This test file lives in the migplan repository.
        let file = URL(fileURLWithPath: #filePath)
        let run = try RunRecord.forPlanFile(file, planName: "self")
        let data = try Data(contentsOf: file)
        #expect(run.planSHA256 == SHA256Hasher.hash(data).hex)
        #expect(run.planSHA256.count == 64)
        if FileManager.default.fileExists(atPath: LabDatabase.repoRoot.appendingPathComponent(".git").path) {
            #expect(run.gitCommit?.count == 40)
        }
        #expect(run.migplanVersion == MigPlanVersion.current)
        #expect(!run.operator.isEmpty)
    }

    @Test func fileOutsideAnyRepositoryHasNoCommit() throws {
        let dir = JournalSpoolTests.tempDir()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("plan.yaml")
        try Data("name: x\n".utf8).write(to: file)
        let run = try RunRecord.forPlanFile(file, planName: "x")
        #expect(run.gitCommit == nil)
        #expect(run.planSHA256 == SHA256Hasher.hash(Array("name: x\n".utf8)).hex)
    }
}

@Suite struct PaperMetricsCodingTests {
    @Test func metricRecordKeepsTheFlatJSONOfSpoolFiles() throws {
        // A spool line as written before the paper's metrics had their own type.
        let line = #"{"id":"m1","runID":"r1","container":"face-1","flow":"stateful","downtime":1.5,"transferSizeBytes":42,"recordedAt":0}"#
        let record = try JSONDecoder().decode(MetricRecord.self, from: Data(line.utf8))
        #expect(record.downtime == 1.5)
        #expect(record.transferSizeBytes == 42)
        #expect(record.checkpointDuration == nil)
        let again = try JSONSerialization.jsonObject(with: JSONEncoder().encode(record)) as? [String: Any]
        #expect(again?["downtime"] as? Double == 1.5)
        #expect(again?["container"] as? String == "face-1")
        #expect(again?["paperMetrics"] == nil)
        #expect(try JSONDecoder().decode(MetricRecord.self, from: JSONEncoder().encode(record)) == record)
    }

    @Test func metricsReadAndWriteThroughTheCarrier() {
        var record = MetricRecord(runID: "r", container: "c", flow: "stateless", killDuration: 0.25)
        record.startDuration = 0.5
        #expect(record.paperMetrics == PaperMetrics(killDuration: 0.25, startDuration: 0.5))
    }
}
