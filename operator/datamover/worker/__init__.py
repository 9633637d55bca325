"""The worker: glue between one worker pod's MigrationJob and the engine that migrates its shard."""
