import ArgumentParser

/// `migplan plan` (placeholder until its issue lands).
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plan", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
