"""`kubectl datamover`: the kubectl plugin people use to watch and stop MigrationJobs."""
