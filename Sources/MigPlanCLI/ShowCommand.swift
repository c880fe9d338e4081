import ArgumentParser

/// `migplan show` (placeholder until its issue lands).
struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
