"""Object store backends: one module per store family behind the `ObjectStore` interface, chosen by config type."""

from __future__ import annotations

from datamover.backends.base import ErrorKind, ObjectStore, StoreError
from datamover.backends.s3 import S3Config, S3Store

__all__ = ["ErrorKind", "ObjectStore", "S3Config", "S3Store", "StoreError", "open_store"]


def open_store(config: S3Config) -> ObjectStore:
    """Open the store a config describes. An Azure config type will get its own branch here, nothing else changes."""
    if isinstance(config, S3Config):
        return S3Store(config)
    raise TypeError(f"no backend for {type(config).__name__}")
