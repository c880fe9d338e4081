// MigPlanRuntime
