// MigPlanActions: the live step runner.
