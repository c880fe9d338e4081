// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "migplan",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "migplan", targets: ["migplan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // System libraries: one-line shim headers, found through pkg-config.
        .systemLibrary(name: "CLibSSH2", pkgConfig: "libssh2", providers: [.apt(["libssh2-1-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // OpenSSL's libcrypto (already a dependency of libssh2-1-dev) for SHA-256/HMAC at
        // hardware speed: see docs/architecture.md.
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),

        // Small shared utilities: shell quoting, digests, process helpers.
        .target(name: "MigPlanBasics", dependencies: ["CCrypto"]),
        // Plan types, loading with source marks, validation, diagnostics.
        .target(name: "MigPlanModel", dependencies: ["MigPlanBasics", "Yams"]),
        // Compiling a plan into a step graph, ordering, rendering (text, JSON, DOT).
        .target(name: "MigPlanGraph", dependencies: ["MigPlanModel"]),
        // SSH transport over libssh2 on dedicated threads.
        .target(name: "MigPlanSSH", dependencies: ["MigPlanBasics", "CLibSSH2"]),
        // runc / Docker / CRIU command builders and output parsers.
        .target(name: "MigPlanRuntime", dependencies: ["MigPlanBasics"]),
        // PostgreSQL journal over libpq.
        .target(name: "MigPlanJournal", dependencies: ["MigPlanBasics", "CLibPQ"]),
        // The executor: runs any step graph.
        .target(name: "MigPlanEngine", dependencies: ["MigPlanBasics", "MigPlanModel", "MigPlanGraph", "CZlib"]),
        // The live step runner: maps graph steps onto SSH commands, runtimes and the journal.
        .target(name: "MigPlanActions", dependencies: [
            "MigPlanBasics", "MigPlanModel", "MigPlanGraph", "MigPlanEngine", "MigPlanSSH",
            "MigPlanRuntime", "MigPlanJournal", "CZlib",
        ]),
        // Commands.
        .target(name: "MigPlanCLI", dependencies: [
            "MigPlanBasics", "MigPlanModel", "MigPlanGraph", "MigPlanSSH", "MigPlanRuntime",
            "MigPlanJournal", "MigPlanEngine", "MigPlanActions", "CLibSSH2", "CLibPQ", "CZlib",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
        ]),
        .executableTarget(name: "migplan", dependencies: ["MigPlanCLI"]),

        .testTarget(name: "MigPlanModelTests", dependencies: ["MigPlanModel"], resources: [.copy("Fixtures")]),
        .testTarget(name: "MigPlanGraphTests", dependencies: ["MigPlanGraph", "MigPlanModel"], resources: [.copy("Snapshots")]),
        .testTarget(name: "MigPlanSSHTests", dependencies: ["MigPlanSSH", "MigPlanBasics"]),
        .testTarget(name: "MigPlanRuntimeTests", dependencies: ["MigPlanRuntime", "MigPlanSSH", "MigPlanBasics"]),
        .testTarget(name: "MigPlanJournalTests", dependencies: ["MigPlanJournal", "MigPlanBasics"]),
        .testTarget(name: "MigPlanEngineTests", dependencies: ["MigPlanEngine", "MigPlanGraph", "MigPlanModel"]),
        .testTarget(name: "MigPlanActionsTests", dependencies: [
            "MigPlanActions", "MigPlanEngine", "MigPlanGraph", "MigPlanModel", "MigPlanSSH", "MigPlanRuntime",
            "MigPlanJournal", "MigPlanBasics",
        ]),
        .testTarget(name: "MigPlanCLITests", dependencies: ["MigPlanCLI"], exclude: ["Snapshots"]),
    ],
    swiftLanguageModes: [.v6]
)
