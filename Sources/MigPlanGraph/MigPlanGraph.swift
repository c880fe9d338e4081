// MigPlanGraph
