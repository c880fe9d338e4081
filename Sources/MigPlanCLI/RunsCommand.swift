import ArgumentParser

/// `migplan runs` (placeholder until its issue lands).
struct RunsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "runs", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
