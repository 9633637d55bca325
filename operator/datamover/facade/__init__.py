"""datamover-api: Gelato's REST API over MigrationPlans and MigrationJobs, for clients written against Gelato."""
