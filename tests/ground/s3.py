"""Real MinIO servers as the ground's "clouds", and the real rclone as a verifier that shares no code with ours.

Each server is a single-drive MinIO on 127.0.0.1 with its own credentials and data directory. rclone reaches the
servers through remotes defined in environment variables, so no credentials are written to disk.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from tests.ground.binaries import binary
from tests.ground.procs import GroundError, Proc, free_ports, http_check, running

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
READY_TIMEOUT = 60.0
# The key of MinIO's built-in KMS on every ground server: what SSE-S3 and SSE-KMS (with this key id) encrypt with.
KMS_KEY_ID = "datamover-ground"


@dataclass
class S3Server:
    """One running MinIO server: where it listens and which root credentials it accepts."""

    name: str
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    log_path: Path
    region: str = REGION
    data_dir: Path | None = None
    startup_seconds: float = 0.0
    proc: Proc | None = field(default=None, repr=False)

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (path-style addressing, no retries hiding failures)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}),
        )

    def rclone_env(self, remote: str) -> dict[str, str]:
        """Environment variables defining an rclone remote named `remote` for this server."""
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        return {
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Minio",
            prefix + "ENDPOINT": self.endpoint,
            prefix + "ACCESS_KEY_ID": self.access_key,
            prefix + "SECRET_ACCESS_KEY": self.secret_key,
            prefix + "REGION": self.region,
            prefix + "FORCE_PATH_STYLE": "true",
        }


@contextlib.contextmanager
def start_minio(
    workdir: Path, name: str, access_key: str, secret_key: str, *, timeout: float = READY_TIMEOUT,
    host: str = "127.0.0.1", extra_env: Mapping[str, str] | None = None,
) -> Iterator[S3Server]:
    """Run one MinIO server with data under `workdir/<name>` for the duration of the block; the data goes with it.

    `host` is loopback except for `make e2e`, where the pods of another cluster must reach the server. `extra_env`
    adds MinIO settings (the benchmark opens its request metrics with MINIO_PROMETHEUS_AUTH_TYPE=public). Every
    server has a built-in KMS key (KMS_KEY_ID), so it takes server-side encryption as AWS S3 does; objects written
    without asking for it are stored as before.
    """
    if len(access_key) < 3 or len(secret_key) < 8:
        raise GroundError("minio: the access key needs 3+ characters and the secret key 8+")
    base = Path(workdir).resolve() / name
    data_dir, certs_dir = base / "data", base / "certs"
    data_dir.mkdir(parents=True, exist_ok=True)
    certs_dir.mkdir(parents=True, exist_ok=True)
    port, console_port = free_ports(2)
    endpoint = f"http://{host}:{port}"
    server = S3Server(
        name=name,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        log_path=base / "minio.log",
        data_dir=data_dir,
    )
    env = {
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        "MINIO_REGION": REGION,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        "MINIO_CI_CD": "1",  # allows a data directory on the root disk
        "MINIO_KMS_SECRET_KEY": f"{KMS_KEY_ID}:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        **(extra_env or {}),
    }
    argv = [
        str(binary("minio")),
        "server",
        "--quiet",
        "--address", f"{host}:{port}",
        "--console-address", f"{host}:{console_port}",
        "--certs-dir", str(certs_dir),
        str(data_dir),
    ]
    t0 = time.monotonic()
    try:
        with running(
            "minio", argv, server.log_path, ready=http_check(f"{endpoint}/minio/health/ready"), timeout=timeout,
            env=env,
        ) as proc:
            server.proc = proc
            server.startup_seconds = time.monotonic() - t0
            yield server
    finally:
        # The objects are the tests' throwaways (gigabytes over a run, kept by pytest for three runs); the log stays.
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# rclone, the independent verifier


def _rclone(
    command: str,
    src: S3Server,
    src_path: str,
    dst: S3Server,
    dst_path: str,
    extra_args: Sequence[str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update(src.rclone_env("src"))
    env.update(dst.rclone_env("dst"))
    with tempfile.TemporaryDirectory(prefix="rclone-") as tmp:
        config = Path(tmp) / "rclone.conf"
        config.write_text("")  # every remote comes from the environment
        cmd = [
            str(binary("rclone")),
            command,
            f"src:{src_path.strip('/')}",
            f"dst:{dst_path.strip('/')}",
            f"--config={config}",
            f"--cache-dir={Path(tmp) / 'cache'}",
            "--low-level-retries=2",
            *extra_args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def rclone_check(
    src: S3Server,
    src_path: str,
    dst: S3Server,
    dst_path: str,
    *extra_args: str,
    download: bool = True,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """`rclone check src:<bucket/prefix> dst:<bucket/prefix>`; exit 0 means both sides hold the same objects.

    By default rclone reads both sides and compares the bytes (`--download`): a multipart object's ETag is not an
    MD5, so a hash-only check would pass two same-sized multipart objects with different contents ("hashes could
    not be checked", exit 0). download=False gives the cheap size-and-hash check.
    Does not raise on differences: the caller asserts on returncode and stderr (which names each differing object).
    """
    args = ("--download", *extra_args) if download else extra_args
    return _rclone("check", src, src_path, dst, dst_path, args, timeout)


def rclone_copy(
    src: S3Server,
    src_path: str,
    dst: S3Server,
    dst_path: str,
    *extra_args: str,
    timeout: float = 3600.0,
) -> subprocess.CompletedProcess[str]:
    """`rclone copy src:<bucket/prefix> dst:<bucket/prefix>` (a baseline for benchmarks); does not raise."""
    return _rclone("copy", src, src_path, dst, dst_path, extra_args, timeout)


# --------------------------------------------------------------------------------------------------------------
# Buckets


def empty_and_delete_bucket(server: S3Server, bucket: str) -> None:
    """Abort open multipart uploads, delete every object version, then the bucket; a missing bucket is fine."""
    s3 = server.client()
    try:
        for uploads in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in uploads.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for listing in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in listing.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass
