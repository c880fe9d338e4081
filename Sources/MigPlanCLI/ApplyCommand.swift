import ArgumentParser

/// `migplan apply` (placeholder until its issue lands).
struct ApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "apply", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
