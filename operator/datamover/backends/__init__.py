"""Object store backends: one module per store family behind the `ObjectStore` interface, chosen by config type.

Only the S3 family is imported here. Azure's and Google's SDKs cost a worker about 30 MiB and 0.3 s to import, so
their modules load when a job uses them: `locations.store_config` imports the family it builds a config for, and the
names below resolve on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from datamover.backends.base import ErrorKind, ObjectStore, StoreError
from datamover.backends.s3 import S3Config, S3Store

if TYPE_CHECKING:
    from datamover.backends.azure_blob import AzureBlobConfig, AzureBlobStore
    from datamover.backends.gcs import GcsConfig, GcsStore

    StoreConfig = S3Config | AzureBlobConfig | GcsConfig

__all__ = [
    "AzureBlobConfig", "AzureBlobStore", "ErrorKind", "GcsConfig", "GcsStore", "ObjectStore", "S3Config", "S3Store",
    "StoreConfig", "StoreError", "open_store",
]

# The other families: name -> the module that defines it.
_LAZY = {"AzureBlobConfig": "azure_blob", "AzureBlobStore": "azure_blob", "GcsConfig": "gcs", "GcsStore": "gcs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "StoreConfig":
        return S3Config | __getattr__("AzureBlobConfig") | __getattr__("GcsConfig")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(config: StoreConfig) -> ObjectStore:
    """Open the store a config describes: each store family has its own config type."""
    if isinstance(config, S3Config):
        return S3Store(config)
    # A config of another family was made by its module, which is loaded already: nothing is imported here.
    for module_name, config_name, store_name in (("azure_blob", "AzureBlobConfig", "AzureBlobStore"),
                                                 ("gcs", "GcsConfig", "GcsStore")):
        module = sys.modules.get(f"{__name__}.{module_name}")
        if module is not None and isinstance(config, getattr(module, config_name)):
            store: ObjectStore = getattr(module, store_name)(config)
            return store
    raise TypeError(f"no backend for {type(config).__name__}")
