import MigPlanCLI

await MigPlanMain.run()
