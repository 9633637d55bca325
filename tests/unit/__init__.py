"""Unit tier: pure functions and moto-backed engine tests; helpers shared by the engine and backend tests live here."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import OpenUpload, Progress

REGION = "us-east-1"


@contextmanager
def moto_s3() -> Iterator[None]:
    """An in-process fake S3 (moto) with dummy credentials, for tests that must not touch a network."""
    from moto import mock_aws

    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    try:
        with mock_aws():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def store(bucket: str, prefix: str = "", account: str = "a", create: bool = True, max_attempts: int = 3) -> S3Store:
    """A store on moto. Stores with different `account` differ in credentials, so no server-side copy between them."""
    config = S3Config(
        bucket=bucket, prefix=prefix, region=REGION, access_key_id=f"AKIA{account.upper()}",
        secret_access_key=f"secret-{account}", max_attempts=max_attempts,
    )
    opened = S3Store(config)
    if create:
        try:
            opened.client.create_bucket(Bucket=bucket)
        except opened.client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return opened


class RecordingSink:
    """A thread-safe sink that keeps everything it is told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: list[Progress] = []
        self.opened: list[OpenUpload] = []
        self.closed: list[OpenUpload] = []

    def on_progress(self, progress: Progress) -> None:
        with self.lock:
            self.progress.append(progress)

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self.lock:
            self.opened.append(upload)

    def on_upload_closed(self, upload: OpenUpload) -> None:
        with self.lock:
            self.closed.append(upload)

    @property
    def still_open(self) -> list[OpenUpload]:
        with self.lock:
            return [upload for upload in self.opened if upload not in self.closed]
