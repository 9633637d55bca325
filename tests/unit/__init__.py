"""Unit tier: pure functions and moto-backed engine tests; helpers shared by the engine and backend tests live here."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from datamover.backends.base import ObjectStore
from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import OpenUpload, Progress, UploadIntent

REGION = "us-east-1"

# moto 5 answers ListMultipartUploads with a fixed Initiated (2010-11-10): the stores the tests open record when
# each upload was created and put that time into the listing, as a real store does. Uploads created by another
# client keep moto's 2010 time (tests use that as "an upload initiated long before our intent").
_INITIATED: dict[str, dt.datetime] = {}


def _record_initiated(parsed: dict[str, Any], **_: Any) -> None:
    if "UploadId" in parsed:
        _INITIATED[parsed["UploadId"]] = dt.datetime.now(dt.UTC)


def _real_initiated(parsed: dict[str, Any], **_: Any) -> None:
    for upload in parsed.get("Uploads", []):
        if upload.get("UploadId") in _INITIATED:
            upload["Initiated"] = _INITIATED[upload["UploadId"]]


def track_initiated(target: S3Store) -> None:
    for client in (target.client, target.create_client):
        client.meta.events.register("after-call.s3.CreateMultipartUpload", _record_initiated)
        client.meta.events.register("after-call.s3.ListMultipartUploads", _real_initiated)


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


def store(
    bucket: str, prefix: str = "", account: str = "a", create: bool = True, max_attempts: int = 3,
    list_page_size: int = 1000,
) -> S3Store:
    """A store on moto. Stores with different `account` differ in credentials, so no server-side copy between them."""
    config = S3Config(
        bucket=bucket, prefix=prefix, region=REGION, access_key_id=f"AKIA{account.upper()}",
        secret_access_key=f"secret-{account}", max_attempts=max_attempts,
        list_page_size=list_page_size,
    )
    opened = S3Store(config)
    track_initiated(opened)
    if create:
        with suppress(opened.client.exceptions.BucketAlreadyOwnedByYou):
            opened.client.create_bucket(Bucket=bucket)
    return opened


def requests_of(*targets: S3Store) -> list[str]:
    """The operation of every request the stores send from now on (each attempt, by either path of the backend:
    its boto3 clients and its direct GET/PUT announce every request as `before-send.s3.<Operation>`)."""
    calls: list[str] = []

    def record(event_name: str, **_: Any) -> None:
        calls.append(event_name.rsplit(".", 1)[1])

    for target in targets:
        for client in {id(target.client): target.client, id(target.create_client): target.create_client}.values():
            client.meta.events.register("before-send.s3", record)
    return calls


class RecordingSink:
    """A thread-safe sink that keeps everything it is told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: list[Progress] = []
        self.opened: list[OpenUpload] = []
        self.closed: list[OpenUpload] = []
        self.intents: list[UploadIntent] = []
        self.cleared: list[UploadIntent] = []
        self.events: list[tuple[str, str]] = []  # (what, key) in the order the engine said it

    def on_upload_intent(self, intent: UploadIntent) -> None:
        with self.lock:
            self.intents.append(intent)
            self.events.append(("intent", intent.key))

    def on_intent_cleared(self, intent: UploadIntent) -> None:
        with self.lock:
            self.cleared.append(intent)
            self.events.append(("cleared", intent.key))

    def on_progress(self, progress: Progress) -> None:
        with self.lock:
            self.progress.append(progress)

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self.lock:
            self.opened.append(upload)
            self.events.append(("opened", upload.key))

    def on_upload_closed(self, upload: OpenUpload) -> None:
        with self.lock:
            self.closed.append(upload)
            self.events.append(("closed", upload.key))

    @property
    def still_intended(self) -> list[UploadIntent]:
        with self.lock:
            return [intent for intent in self.intents if intent not in self.cleared]

    @property
    def still_open(self) -> list[OpenUpload]:
        with self.lock:
            return [upload for upload in self.opened if upload not in self.closed]


def digest_of(target: ObjectStore, key: str) -> str | None:
    """MD5 hex of an object's content, or None if it does not exist (streamed: fine for large objects)."""
    if target.stat(key) is None:
        return None
    stream = target.open_read(key, None, None, None)
    digest = hashlib.md5()
    try:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    finally:
        stream.close()
    return digest.hexdigest()


def assert_invariant(
    source: ObjectStore, destination: ObjectStore, originals: dict[str, str], remain_source: bool,
) -> dict[str, int]:
    """The engine's promise after any stop, checked key by key; returns how many objects are in each condition.

    originals maps each source key to the MD5 of its content before the migration.
    """
    counts = {"untouched": 0, "migrated": 0, "retained": 0}
    for key, original in originals.items():
        destination_key = destination.prefix + key[len(source.prefix):]
        at_destination = digest_of(destination, destination_key)
        at_source = digest_of(source, key)
        if at_destination is None:
            assert at_source == original, f"{key}: not at the destination and not intact in the source"
            counts["untouched"] += 1
            continue
        assert at_destination == original, f"{key}: the destination holds different (partial?) content"
        if remain_source:
            assert at_source == original, f"{key}: source changed although remain_source=True"
            counts["migrated"] += 1
        elif at_source is None:
            counts["migrated"] += 1
        else:
            assert at_source == original
            counts["retained"] += 1
        uploads = list(destination.list_uploads(destination_key))
        assert uploads == [], f"{key}: uploads left open: {uploads}"
    return counts


def open_uploads(target: S3Store) -> list[dict[str, Any]]:
    """Every upload open anywhere in the bucket, as S3 lists them (not through the store seam)."""
    return list(target.client.list_multipart_uploads(Bucket=target.bucket).get("Uploads", []))
