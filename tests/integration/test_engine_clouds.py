"""The engine across clouds: S3 (MinIO) -> Azure (Azurite) -> GCS (fake-gcs-server) -> S3, copy, move, abort, crash.

Judged by an independent read through each vendor's own SDK (boto3, azure-storage-blob, google-cloud-storage), never
through the backend under test: every key is either absent at the destination and intact at the source, or exactly
migrated (and, for a move, gone from the source); the fragments of an upload in parts are listed with the vendor SDK
too (S3 multipart uploads, Azure uncommitted blocks, GCS part objects) and must be gone after any stop.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest

from datamover.backends import StoreConfig, open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.base import ObjectStore
from datamover.backends.gcs import UPLOAD_AREA, GcsConfig
from datamover.engine import AbortSignal, MigrationOptions, Outcome, UploadIntent, close_leftovers, migrate
from tests.ground.clouds import AzuriteServer, FakeGcsServer
from tests.ground.plugin_clouds import ContainerFactory
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server
from tests.integration.test_engine_minio import config as s3_config
from tests.integration.test_store_conformance_clouds import azure_config, gcs_config
from tests.unit import RecordingSink

MiB = 1024 * 1024
OPTIONS = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 2, "part_concurrency": 2,
           "progress_interval": 0.2}
BIG = 11 * MiB + 123  # three parts of 5 MiB


@dataclass
class Side:
    """One place objects live, with a judge that reads it through the vendor SDK only."""

    kind: str
    config: StoreConfig
    put: Callable[[str, bytes], None]  # key, body (content type text/x-test)
    contents: Callable[[], dict[str, str]]  # key -> MD5 of the bytes, every object under the prefix
    fragments: Callable[[], list[str]]  # open uploads in parts, as the vendor lists them

    def store(self) -> ObjectStore:
        return open_store(self.config)


def _s3(server: S3Server, bucket: str, prefix: str) -> Side:
    client = server.client()

    def contents() -> dict[str, str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"]: hashlib.md5(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
                for o in listed}

    return Side(
        "s3", s3_config(server, bucket, prefix),
        lambda key, body: client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/x-test"),
        contents,
        lambda: [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])],
    )


def _azure(server: AzuriteServer, container: str, prefix: str) -> Side:
    from azure.storage.blob import ContentSettings

    client = server.client().get_container_client(container)

    def contents() -> dict[str, str]:
        return {b.name: hashlib.md5(client.download_blob(b.name, decompress=False).readall()).hexdigest()
                for b in client.list_blobs(name_starts_with=prefix)}

    def fragments() -> list[str]:
        # Blobs that exist only as uncommitted blocks, and uncommitted blocks on committed blobs.
        names = [b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"])]
        return [name for name in names if client.get_blob_client(name).get_block_list("uncommitted")[1]]

    return Side(
        "azure", azure_config(server, container, prefix),
        lambda key, body: client.upload_blob(key, body, overwrite=True,
                                             content_settings=ContentSettings(content_type="text/x-test")),
        contents, fragments,
    )


def _gcs(server: FakeGcsServer, bucket_name: str, prefix: str) -> Side:
    client = server.client()
    bucket = client.bucket(bucket_name)

    def put(key: str, body: bytes) -> None:
        bucket.blob(key).upload_from_string(body, content_type="text/x-test")

    def contents() -> dict[str, str]:
        return {b.name: hashlib.md5(b.download_as_bytes(raw_download=True)).hexdigest()
                for b in client.list_blobs(bucket_name, prefix=prefix) if UPLOAD_AREA not in b.name}

    return Side("gcs", gcs_config(server, bucket_name, prefix), put, contents,
                lambda: [b.name for b in client.list_blobs(bucket_name, prefix=prefix + UPLOAD_AREA)])


@pytest.fixture
def side(cloud_a: S3Server, bucket_factory: BucketFactory, azurite: AzuriteServer, azure_container: ContainerFactory,
         fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory) -> Callable[[str, str], Side]:
    def make(kind: str, prefix: str) -> Side:
        if kind == "s3":
            return _s3(cloud_a, bucket_factory(cloud_a), prefix)
        if kind == "azure":
            return _azure(azurite, azure_container(), prefix)
        return _gcs(fake_gcs, gcs_bucket(), prefix)

    return make


def fill(source: Side, big: int = 1) -> dict[str, str]:
    """Small objects and `big` objects written in parts; returns key (under the source prefix) -> MD5."""
    prefix = source.store().prefix
    bodies = {f"{prefix}big-{i}.bin": os.urandom(BIG + i) for i in range(big)}
    bodies.update({f"{prefix}small/{name}": os.urandom(1000 + i) for i, name in enumerate(
        ["a.txt", "with space.txt", "ünï.bin", "z"])})
    for key, body in bodies.items():
        source.put(key, body)
    return {key: hashlib.md5(body).hexdigest() for key, body in bodies.items()}


def judge(source: Side, destination: Side, originals: dict[str, str], remain_source: bool) -> dict[str, int]:
    """The promise after any stop, read through the vendor SDKs: untouched, or exactly migrated; no fragment."""
    source_prefix, destination_prefix = source.store().prefix, destination.store().prefix
    at_source, at_destination = source.contents(), destination.contents()
    counts = {"untouched": 0, "migrated": 0}
    for key, original in originals.items():
        copied = at_destination.get(destination_prefix + key[len(source_prefix):])
        if copied is None:
            assert at_source.get(key) == original, f"{key}: not at the destination and not intact in the source"
            counts["untouched"] += 1
            continue
        assert copied == original, f"{key}: the destination holds different (partial?) content"
        assert at_source.get(key) == (original if remain_source else None), f"{key}: source wrong after the copy"
        counts["migrated"] += 1
    assert set(at_destination) <= {destination_prefix + k[len(source_prefix):] for k in originals}
    assert destination.fragments() == [], "an upload in parts was left behind"
    return counts


PAIRS = [("s3", "azure"), ("azure", "gcs"), ("gcs", "s3")]


@pytest.mark.parametrize("remain_source", [True, False], ids=["copy", "move"])
@pytest.mark.parametrize(("source_kind", "destination_kind"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_a_migration_between_clouds_is_exact(
    side: Callable[[str, str], Side], source_kind: str, destination_kind: str, remain_source: bool,
) -> None:
    source, destination = side(source_kind, "in/"), side(destination_kind, "out/")
    originals = fill(source)

    result = migrate(source.store(), destination.store(), MigrationOptions(remain_source=remain_source, **OPTIONS),  # type: ignore[arg-type]
                     AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert judge(source, destination, originals, remain_source) == {"untouched": 0, "migrated": len(originals)}
    info = destination.store().stat("out/big-0.bin")
    assert info is not None and info.attributes.content_type == "text/x-test", "content headers travel"


@pytest.mark.parametrize(("source_kind", "destination_kind"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_an_abort_mid_object_leaves_every_object_untouched_or_exact_and_no_fragment(
    side: Callable[[str, str], Side], source_kind: str, destination_kind: str,
) -> None:
    source, destination = side(source_kind, "in/"), side(destination_kind, "out/")
    originals = fill(source)
    # The second part of the big object: an upload with a part written is open when the abort comes.
    abort = AbortSignal.at_checkpoint("between_parts", 1, counts=lambda key: key is not None and "big-" in key)
    sink = RecordingSink()

    result = migrate(source.store(), destination.store(), MigrationOptions(remain_source=False, **OPTIONS),  # type: ignore[arg-type]
                     abort, sink)

    assert abort.requested and result.outcome is Outcome.ABORTED, result.error
    counts = judge(source, destination, originals, remain_source=False)
    assert counts["untouched"] >= 1, "the big object was stopped mid-way"
    assert sink.opened and len(sink.closed) == len(sink.opened) and len(sink.cleared) == len(sink.intents)


KILLED_CHILD = r"""
import json, os, sys, time
from datamover.backends import open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.gcs import GcsConfig
from datamover.backends.s3 import S3Config
from datamover.engine import AbortSignal, MigrationOptions, migrate

KINDS = {"s3": S3Config, "azure": AzureBlobConfig, "gcs": GcsConfig}

def store(side):
    return open_store(KINDS[os.environ[f"DM_{side}_KIND"]](**json.loads(os.environ[f"DM_{side}_CONFIG"])))

class PrintingSink:
    def on_progress(self, progress): pass
    def on_upload_intent(self, i): print(f"INTENT {i.key} {i.since.isoformat()}", flush=True)
    def on_intent_cleared(self, i): pass
    def on_upload_opened(self, u): pass
    def on_upload_closed(self, u): pass

def slow(name, key):
    if name == "between_parts":
        time.sleep(0.5)  # keep the copy between its parts long enough to be killed there

options = MigrationOptions(part_size=5 * 1024 * 1024, multipart_threshold=5 * 1024 * 1024, concurrency=1,
                           part_concurrency=1)
migrate(store("SRC"), store("DST"), options, AbortSignal(on_checkpoint=slow), PrintingSink())
print("FINISHED", flush=True)
"""


@pytest.mark.parametrize("destination_kind", ["azure", "gcs"])
def test_a_crash_mid_upload_leaves_a_fragment_the_recorded_intent_finds_and_removes(
    side: Callable[[str, str], Side], destination_kind: str,
) -> None:
    """SIGKILL after a part is written: the upload's ID never left the process; its intent is all that is recorded."""
    source, destination = side("s3", "in/"), side(destination_kind, "")
    source.put("in/big.bin", os.urandom(BIG))
    env = dict(os.environ)
    for name, where in (("SRC", source), ("DST", destination)):
        # Configs (the emulators' well-known development credentials) go through the environment, never argv.
        kind = {"S3Config": "s3", "AzureBlobConfig": "azure", "GcsConfig": "gcs"}[type(where.config).__name__]
        env.update({f"DM_{name}_KIND": kind, f"DM_{name}_CONFIG": json.dumps(asdict(where.config))})
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("INTENT"), line
        _, key, since = line.split()
        deadline = time.monotonic() + 60
        while not _a_part_is_written(destination, key):
            assert child.poll() is None, "the child ended before a part was written"
            assert time.monotonic() < deadline, "no part was written"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert destination.fragments(), "the killed upload left its fragment"
    assert destination.contents() == {}, "no partial object is visible"

    cleanup = close_leftovers(destination.store(), intents=[UploadIntent(key, dt.datetime.fromisoformat(since))])

    assert len(cleanup.aborted) == 1 and len(cleanup.resolved) == 1, cleanup
    assert destination.fragments() == [] and destination.contents() == {}


def _a_part_is_written(destination: Side, key: str) -> bool:
    """Through the vendor SDK: the upload holds part 1, not only its create's marker."""
    if isinstance(destination.config, AzureBlobConfig):
        from azure.storage.blob import BlobClient

        blob = BlobClient(destination.config.account_url, destination.config.container, key,
                          credential={"account_name": destination.config.account_name,
                                      "account_key": destination.config.account_key})
        try:
            blocks = blob.get_block_list("uncommitted")[1]
        except Exception:  # no block yet: the blob does not exist
            return False
        return any(base64.b64decode(block.id).decode().endswith("-000001") for block in blocks)
    assert isinstance(destination.config, GcsConfig)
    return any(name.endswith("/00001") for name in destination.fragments())

