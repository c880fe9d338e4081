// MigPlanEngine
