"""Object store backends: one module per store family behind the `ObjectStore` interface, chosen by config type."""

from __future__ import annotations

from datamover.backends.azure_blob import AzureBlobConfig, AzureBlobStore
from datamover.backends.base import ErrorKind, ObjectStore, StoreError
from datamover.backends.gcs import GcsConfig, GcsStore
from datamover.backends.s3 import S3Config, S3Store

__all__ = [
    "AzureBlobConfig", "ErrorKind", "GcsConfig", "ObjectStore", "S3Config", "S3Store", "StoreConfig", "StoreError",
    "open_store",
]

StoreConfig = S3Config | AzureBlobConfig | GcsConfig


def open_store(config: StoreConfig) -> ObjectStore:
    """Open the store a config describes: each store family has its own config type."""
    if isinstance(config, S3Config):
        return S3Store(config)
    if isinstance(config, AzureBlobConfig):
        return AzureBlobStore(config)
    if isinstance(config, GcsConfig):
        return GcsStore(config)
    raise TypeError(f"no backend for {type(config).__name__}")
