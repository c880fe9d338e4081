import ArgumentParser
import CLibPQ
import CLibSSH2
import CZlib
import Foundation
import MigPlanBasics
import Yams

enum MigPlanVersionString {
    static var short: String { MigPlanVersion.current }

    /// migplan's version and the runtime versions of the C libraries it links.
    static var components: [(String, String)] {
        let ssh2 = libssh2_version(0).map { String(cString: $0) } ?? "unknown"
        let pq = Int(PQlibVersion())
        let pqString = "\(pq / 10000).\(pq % 10000)"
        let zlib = String(cString: zlibVersion())
        return [
            ("migplan", MigPlanVersion.current),
            ("libssh2", ssh2),
            ("libpq", pqString),
            ("zlib", zlib),
            ("libyaml", yamlRuntimeVersion()),
        ]
    }
}

/// `migplan version`
struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print migplan's version and the versions of the libraries it runs with.",
        discussion: "The library versions are read at run time from the loaded libssh2, libpq, zlib and libyaml."
    )

    @Option(name: .long, help: "Output format: text or json.")
    var format: OutputFormat = .text

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable { case text, json }

    func run() throws {
        let parts = MigPlanVersionString.components
        switch format {
        case .text:
            for (name, version) in parts { print("\(name) \(version)") }
        case .json:
            let object = Dictionary(uniqueKeysWithValues: parts)
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// The libyaml that parses plans is the copy Yams compiles in (upstream libyaml 0.2.5 with
/// Yams' patches); Yams leaves out `yaml_get_version_string`, so the version is Yams' record of it.
func yamlRuntimeVersion() -> String {
    "0.2.5 (bundled with Yams)"
}
