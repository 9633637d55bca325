"""The operator: kopf handlers that turn a MigrationJob into worker pods and keep its status true."""
