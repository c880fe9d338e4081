import ArgumentParser

/// `migplan validate` (placeholder until its issue lands).
struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "validate", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
