// MigPlanJournal
