import ArgumentParser

/// `migplan lab` (placeholder until its issue lands).
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lab", abstract: "Not yet implemented.")
    func run() throws { throw ExitCode.failure }
}
