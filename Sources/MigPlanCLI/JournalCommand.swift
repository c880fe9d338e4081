import ArgumentParser

/// `migplan journal` (placeholder until its issue lands).
struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "journal", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
