import ArgumentParser

/// `migplan check` (placeholder until its issue lands).
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
