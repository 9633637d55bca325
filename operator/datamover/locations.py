"""Turns a MigrationJob Location plus its credentials into a backend configuration (worker and janitor share it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from datamover.api import SERVER_SIDE_ENCRYPTION, Location, StoreType
from datamover.backends.s3 import S3Config

if TYPE_CHECKING:
    from datamover.backends import StoreConfig


def s3_config(location: Location, credentials: Mapping[str, str]) -> S3Config:
    """credentials holds the Secret's keys (accessKeyId, secretAccessKey, sessionToken); empty = ambient ones."""
    return S3Config(
        bucket=location.bucket,
        prefix=location.prefix,
        endpoint=location.endpoint,
        region=location.region,
        access_key_id=credentials.get("accessKeyId") or None,
        secret_access_key=credentials.get("secretAccessKey") or None,
        session_token=credentials.get("sessionToken") or None,
        insecure_skip_tls_verify=location.insecure_skip_tls_verify,
        addressing_style=location.addressing_style,  # type: ignore[arg-type]
        server_side_encryption=SERVER_SIDE_ENCRYPTION.get(location.server_side_encryption or ""),
        kms_key_id=location.kms_key_id,
    )


def store_config(
    location: Location, credentials: Mapping[str, str], *, max_pool_connections: int | None = None,
    stall_timeout: float | None = None,
) -> StoreConfig:
    """The backend configuration of a location of any type; credentials holds its Secret's keys (empty = ambient).

    `max_pool_connections` and `stall_timeout` override the backends' defaults (the worker sizes them).
    """
    tuning: dict[str, float] = {} if stall_timeout is None else {"stall_timeout": stall_timeout}
    pool: dict[str, int] = {} if max_pool_connections is None else {"max_pool_connections": max_pool_connections}
    # Each family's module (and its SDK) is imported only for a location of that family.
    if location.type is StoreType.AZURE_BLOB:
        from datamover.backends.azure_blob import AzureBlobConfig

        account = location.account_name or ""
        secret = {key: credentials.get(key) or None for key in (
            "accountKey", "sasToken", "tenantId", "clientId", "clientSecret", "authorityHost")}
        return AzureBlobConfig(
            container=location.bucket, prefix=location.prefix,
            account_url=location.endpoint or f"https://{account}.blob.core.windows.net",
            account_name=account, account_key=secret["accountKey"], sas_token=secret["sasToken"],
            tenant_id=secret["tenantId"], client_id=secret["clientId"], client_secret=secret["clientSecret"],
            authority_host=secret["authorityHost"],
            # No Secret: the pod's Azure Workload Identity, as a gcs location without one uses the pod's identity.
            workload_identity=location.secret_name is None, credentials_name=location.secret_name,
            **tuning, **pool,  # type: ignore[arg-type]
        )
    if location.type is StoreType.GCS:
        from datamover.backends.gcs import GcsConfig

        return GcsConfig(
            bucket=location.bucket, prefix=location.prefix, endpoint=location.endpoint, project=location.project,
            service_account_json=credentials.get("serviceAccountJson") or None, **tuning,  # type: ignore[arg-type]
        )
    return replace(s3_config(location, credentials), **tuning, **pool)  # type: ignore[arg-type]
