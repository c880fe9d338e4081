import ArgumentParser
import Foundation

/// Exit statuses of every migplan command (docs/exit-codes.md).
public enum MigPlanExit {
    /// Success; for `apply`, nothing needed changing.
    public static let success: Int32 = 0
    /// The plan is invalid, a check failed, or a run failed.
    public static let failure: Int32 = 1
    /// The command line itself is wrong (unknown flag, missing argument).
    public static let usage: Int32 = 2
    /// `apply --detailed-exitcode`: the run succeeded and changed something.
    public static let changed: Int32 = 3
}

/// The entry point: parses the command line and maps errors onto documented exit statuses.
public enum MigPlanMain {
    public static func run(_ arguments: [String]? = nil) async -> Never {
        do {
            var command = try MigPlanCommand.parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            exit(MigPlanExit.success)
        } catch {
            if isUsageError(error) {
                // ArgumentParser says 64 (EX_USAGE); migplan documents 2 for usage errors.
                FileHandle.standardError.write(Data((MigPlanCommand.fullMessage(for: error) + "\n").utf8))
                exit(MigPlanExit.usage)
            }
            MigPlanCommand.exit(withError: error)
        }
    }

    /// Whether `error` is a mistake in the command line (exit status 2) rather than a failure.
    public static func isUsageError(_ error: any Error) -> Bool {
        MigPlanCommand.exitCode(for: error) == .validationFailure
    }
}

/// `migplan`: the root command.
public struct MigPlanCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "migplan",
        abstract: "Secure live migration of containers, driven by declarative plans.",
        discussion: """
        A plan (YAML, see docs/plan-format.md) names the hosts, the SSH keys and algorithms, the containers and how each moves. migplan connects to every host over SSH (public-key only, host keys verified), checkpoints stateful containers with CRIU, moves the checkpoint over the encrypted channel, restores it on the destination, and records every action in PostgreSQL over SSL.

        Typical use:
          migplan validate plans/*.yaml               check plans, no connection
          migplan plan plans/face-multiuser.yaml      show the step graph, no connection
          migplan check plans/face-multiuser.yaml     connect to every host and report

        Exit statuses: 0 success, 1 failure (invalid plan, failed check or run), 2 usage error, 3 changes applied (apply --detailed-exitcode only). See docs/exit-codes.md.
        """,
        version: MigPlanVersionString.short,
        subcommands: MigPlanSubcommands.all
    )

    public init() {}
}
