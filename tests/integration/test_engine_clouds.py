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
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from datamover.backends import StoreConfig, open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.base import ObjectStore
from datamover.backends.gcs import UPLOAD_AREA, GcsConfig
from datamover.engine import AbortSignal, MigrationOptions, Outcome, UploadIntent, close_leftovers, migrate
from datamover.worker.main import failure_reason
from tests.ground.clouds import AzuriteServer, FakeGcsServer
from tests.ground.plugin_clouds import ContainerFactory
from tests.ground.plugin_matrix import seed_of
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server
from tests.integration.test_engine_minio import config as s3_config
from tests.integration.test_store_conformance_clouds import azure_config, gcs_config
from tests.unit import RecordingSink

MiB = 1024 * 1024
OPTIONS = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 2, "part_concurrency": 2,
           "progress_interval": 0.2}
BIG = 5 * MiB + 123  # two parts of 5 MiB: an upload in parts, at the least bytes


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


def fill(source: Side, big: int = 1, big_size: int = BIG) -> dict[str, str]:
    """Small objects and `big` objects written in parts; returns key (under the source prefix) -> MD5."""
    prefix = source.store().prefix
    bodies = {f"{prefix}big-{i}.bin": os.urandom(big_size + i) for i in range(big)}
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
    if remain_source:
        rerun = migrate(source.store(), destination.store(), MigrationOptions(**OPTIONS),  # type: ignore[arg-type]
                        AbortSignal(), RecordingSink())
        assert rerun.outcome is Outcome.SUCCEEDED, rerun.error
        # Recognised without copying: every object where the destination states an MD5 (S3's ETags, Azure's and
        # GCS's stored MD5 of whole writes) or S3's part layout. An Azure block list states none, nor does a real
        # GCS composition (fake-gcs-server gives one an md5Hash): such a big object is copied again, a known gap.
        big_md5 = info.known_md5
        assert rerun.progress.objects_skipped == len(originals) - (0 if destination_kind == "s3" or big_md5 else 1)
        assert judge(source, destination, originals, remain_source)["migrated"] == len(originals)


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


# -- crash matrix: the worker stand-in (tests/ground/crash_runner.py) SIGKILLed while writing to Azure or GCS -----

# Kill point -> the highest occurrence one run reaches with CRASH_OPTIONS on fill(big_size=CRASH_BIG)'s dataset.
CRASH_BIG = 5 * MiB + 1  # two parts
CRASH_POINTS = {"after_create_multipart": 1, "on_upload_opened": 1, "between_parts": 2, "between_chunks": 5,
                "before_delete_source": 5}
CRASH_OPTIONS = {**OPTIONS, "chunk_size": MiB}


def plan_cloud_crashes(seed: int) -> list[tuple[str, str, int]]:
    """(destination kind, kill point, occurrence), two per destination type, drawn from the session's seed: one
    around the create (before its ID is recorded), one while parts are written or the source is deleted."""
    rng = random.Random(seed)
    trials = []
    for kind in ("azure", "gcs"):
        for point in (rng.choice(["after_create_multipart", "on_upload_opened"]),
                      rng.choice(["between_parts", "between_chunks", "before_delete_source"])):
            trials.append((kind, point, rng.randint(1, CRASH_POINTS[point])))
    return trials


def test_the_cloud_crash_plan_reaches_every_kill_point_over_seeds() -> None:
    assert {point for seed in range(20) for _, point, _ in plan_cloud_crashes(seed)} == set(CRASH_POINTS)
    assert plan_cloud_crashes(7) == plan_cloud_crashes(7)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cloud_crash" in metafunc.fixturenames:
        seed = seed_of(metafunc.config)
        trials = plan_cloud_crashes(seed)
        metafunc.parametrize("cloud_crash", trials,
                             ids=[f"{kind}-{point}-{occurrence}-seed{seed}" for kind, point, occurrence in trials])


def _config_entry(config: StoreConfig) -> dict[str, object]:
    kind = {AzureBlobConfig: "azureBlob", GcsConfig: "gcs"}.get(type(config), "s3")  # type: ignore[call-overload]
    return {"kind": kind, **asdict(config)}


def test_a_crash_while_writing_to_azure_or_gcs_is_cleaned_by_the_recorded_intents(
    side: Callable[[str, str], Side], cloud_crash: tuple[str, str, int], tmp_path: Path,
) -> None:
    """SIGKILL at a seeded place (move: the source delete is in play too); the successor closes the recorded
    intents only (upload IDs that never reached the record are found by them), then a re-run finishes exactly."""
    kind, point, occurrence = cloud_crash
    source, destination = side("s3", "in/"), side(kind, "out/")
    originals = fill(source, big_size=CRASH_BIG)
    record = tmp_path / "record.json"
    spec = {"source": _config_entry(source.config), "destination": _config_entry(destination.config),
            "mode": "move", "kill": point, "occurrence": occurrence, "record": str(record), "options": CRASH_OPTIONS}
    # The spec holds credentials (the emulators' development ones): the environment, never argv.
    env = {**os.environ, "DM_CRASH_SPEC": json.dumps(spec)}
    child = subprocess.run([sys.executable, "-m", "tests.ground.crash_runner"], env=env, capture_output=True,
                           text=True, timeout=180, cwd=Path(__file__).resolve().parents[2], check=False)
    context = f"{cloud_crash}: {child.stdout[-2000:]}{child.stderr[-2000:]}"
    assert child.returncode == -signal.SIGKILL, f"the kill point was never reached\n{context}"

    recorded = json.loads(record.read_text())
    cleared = {(c["key"], c["since"]) for c in recorded["cleared"]}
    intents = [UploadIntent(i["key"], dt.datetime.fromisoformat(i["since"])) for i in recorded["intents"]
               if (i["key"], i["since"]) not in cleared]
    cleanup = close_leftovers(destination.store(), intents=intents)
    assert not cleanup.unresolved, f"{context}\n{cleanup}"
    # After the crash and the cleanup: nothing partial, no fragment; a key may be in both places (killed between
    # its verified copy and its source delete), never changed.
    at_source, at_destination = source.contents(), destination.contents()
    for key, original in originals.items():
        assert at_source.get(key) in (original, None) and at_destination.get("out/" + key[3:]) in (original, None)
        assert original in (at_source.get(key), at_destination.get("out/" + key[3:])), f"{key} lost\n{context}"
    assert destination.fragments() == [], context

    rerun = migrate(source.store(), destination.store(), MigrationOptions(remain_source=False, **OPTIONS),  # type: ignore[arg-type]
                    AbortSignal(), RecordingSink())
    assert rerun.outcome is Outcome.SUCCEEDED, rerun.error
    assert judge(source, destination, originals, remain_source=False)["migrated"] == len(originals)


def test_a_wrong_azure_key_or_a_missing_container_or_bucket_fails_saying_which(
    side: Callable[[str, str], Side], azurite: AzuriteServer, fake_gcs: FakeGcsServer,
) -> None:
    destination = side("s3", "")
    wrong_key = base64.b64encode(os.urandom(64)).decode()
    cases = {
        "CredentialsRejected": azure_config(azurite, "photos", account_key=wrong_key),
        "BucketNotFound": azure_config(azurite, "no-such-container"),
        "BucketNotFound ": gcs_config(fake_gcs, "no-such-bucket"),
    }
    for reason, config in cases.items():
        result = migrate(open_store(config), destination.store(), MigrationOptions(**OPTIONS),  # type: ignore[arg-type]
                         AbortSignal(), RecordingSink())
        assert result.outcome is Outcome.FAILED and result.fatal_kind == "permanent", (reason, result)
        assert failure_reason(result) == reason.strip(), (reason, result.fatal_code, result.error)
        assert wrong_key not in (result.error or "")
        assert config.bucket in (result.error or ""), "the message names the container or bucket"


def test_azure_to_azure_copies_server_side_exactly(side: Callable[[str, str], Side],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Copy Blob From URL for small objects, Put Block From URL for the big one: no byte passes through us."""
    source, destination = side("azure", "in/"), side("azure", "out/")
    originals = fill(source)
    with caplog.at_level("INFO", logger="datamover.engine"):
        result = migrate(source.store(), destination.store(), MigrationOptions(remain_source=False, **OPTIONS),  # type: ignore[arg-type]
                         AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert any("server_side_copy=True" in message for message in caplog.messages), caplog.messages
    assert judge(source, destination, originals, remain_source=False)["migrated"] == len(originals)
    info = destination.store().stat("out/big-0.bin")
    assert info is not None and info.attributes.content_type == "text/x-test"
