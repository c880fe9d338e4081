// MigPlanSSH
