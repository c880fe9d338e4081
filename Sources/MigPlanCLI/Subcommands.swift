import ArgumentParser

/// Every subcommand, in the order `--help` lists them. Each lives in its own file.
enum MigPlanSubcommands {
    static let all: [ParsableCommand.Type] = [
        ValidateCommand.self,
        PlanCommand.self,
        ApplyCommand.self,
        ReportCommand.self,
        CheckCommand.self,
        LabCommand.self,
        JournalCommand.self,
        RunsCommand.self,
        ShowCommand.self,
        VersionCommand.self,
    ]
}
