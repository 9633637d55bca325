"""datamover: a Kubernetes operator that migrates object storage between clouds and can abort a migration cleanly."""

__version__ = "0.1.0"
