import ArgumentParser

/// `migplan report` (placeholder until its issue lands).
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "report", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
