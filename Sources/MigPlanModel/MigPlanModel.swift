// MigPlanModel
