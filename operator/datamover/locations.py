"""Turns a MigrationJob Location plus its credentials into a backend configuration (worker and janitor share it)."""

from __future__ import annotations

from collections.abc import Mapping

from datamover.api import Location
from datamover.backends.s3 import S3Config


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
    )
