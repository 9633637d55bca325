"""The engine against two real MinIO servers: abort at every checkpoint, full migration, server-side copy, SIGKILL.

rclone (which shares no code with ours) checks the results; the invariant is also checked object by object.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from datamover.backends import open_store
from datamover.backends.base import ObjectAttributes, ObjectStore
from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import (
    CHECKPOINTS,
    AbortSignal,
    MigrationOptions,
    MigrationResult,
    OpenUpload,
    Outcome,
    Throttle,
    UploadIntent,
    close_leftovers,
    migrate,
)
from tests.ground.procs import free_port
from tests.ground.s3 import S3Server, empty_and_delete_bucket, rclone_check
from tests.unit import RecordingSink, assert_invariant

MiB = 1024 * 1024
BIG = 64 * MiB
OPTIONS = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 4, "part_concurrency": 4,
           "progress_interval": 0.2}
PREFIX = "data/"

BucketFactory = Callable[[S3Server], str]


def config(server: S3Server, bucket: str, prefix: str = "", **overrides: object) -> S3Config:
    fields: dict[str, object] = {
        "bucket": bucket, "prefix": prefix, "endpoint": server.endpoint, "region": server.region,
        "access_key_id": server.access_key, "secret_access_key": server.secret_key, "addressing_style": "path",
        "max_attempts": 3, **overrides,
    }
    return S3Config(**fields)  # type: ignore[arg-type]


def open_(server: S3Server, bucket: str, prefix: str = "", **overrides: object) -> ObjectStore:
    return open_store(config(server, bucket, prefix, **overrides))


@dataclass
class Workload:
    """A source bucket on cloud_a holding small objects and 64 MiB multipart-sized objects, with their MD5s."""

    bucket: str
    originals: dict[str, str]

    @property
    def big_keys(self) -> list[str]:
        return [key for key in self.originals if "/big-" in key]


def _fill(server: S3Server, bucket: str) -> dict[str, str]:
    client = server.client()
    originals: dict[str, str] = {}
    # Big objects sort first so they are in flight early; keys include spaces, unicode and slash runs.
    for index in range(2):
        body = os.urandom(BIG + index * 12345)
        key = f"{PREFIX}big-{index}.bin"
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-test",
                          Metadata={"origin": "cloud-a"})
        originals[key] = hashlib.md5(body).hexdigest()
    # MinIO refuses "//" runs in keys (XMinioInvalidObjectName); the moto unit tests cover them.
    names = ["small 0.txt", "smäll-1.txt", "small/2/deep", "small-3/", "small-4-empty"]
    names += [f"small-{i}.txt" for i in range(5, 14)]
    for index, name in enumerate(names):
        body = b"" if name.endswith(("/", "empty")) else os.urandom(4096 * (index + 1))
        client.put_object(Bucket=bucket, Key=PREFIX + name, Body=body)
        originals[PREFIX + name] = hashlib.md5(body).hexdigest()
    client.put_object(Bucket=bucket, Key="outside-the-prefix", Body=b"not ours")
    return originals


@pytest.fixture(scope="module")
def workload(cloud_a: S3Server) -> Iterator[Workload]:
    bucket = f"engine-src-{os.getpid()}"
    cloud_a.client().create_bucket(Bucket=bucket)
    try:
        yield Workload(bucket, _fill(cloud_a, bucket))
    finally:
        empty_and_delete_bucket(cloud_a, bucket)


def _server_side_clone(server: S3Server, workload: Workload, bucket: str) -> None:
    client = server.client()
    for key in workload.originals:
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": workload.bucket, "Key": key})


def _rclone_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"rclone check found differences:\n{result.stderr[-3000:]}"


def _abort_hook(checkpoint: str, after: int, big_only: bool) -> AbortSignal:
    """Abort at the (after+1)-th hit of `checkpoint` (counting only big objects if big_only)."""
    return AbortSignal.at_checkpoint(checkpoint, after,
                                     counts=lambda key: not big_only or (key is not None and "/big-" in key))


# (checkpoint, hit to abort at, count big objects only, remain_source)
ABORTS = {
    "before_list_page": (2, False, True),
    "before_object": (5, False, True),
    "after_create_multipart": (0, True, True),
    "between_parts": (3, True, True),
    "between_chunks": (20, True, True),
    "before_delete_source": (4, False, False),
}


def test_every_checkpoint_is_covered() -> None:
    assert set(ABORTS) == set(CHECKPOINTS)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_abort_at_checkpoint_during_a_mixed_workload(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory, checkpoint: str,
) -> None:
    after, big_only, remain_source = ABORTS[checkpoint]
    source_bucket = workload.bucket
    if not remain_source:  # a move deletes sources: work on a private clone of the workload
        source_bucket = bucket_factory(cloud_a)
        _server_side_clone(cloud_a, workload, source_bucket)
    destination_bucket = bucket_factory(cloud_b)
    source = open_(cloud_a, source_bucket, PREFIX, list_page_size=3)
    destination = open_(cloud_b, destination_bucket, "moved/")
    abort = _abort_hook(checkpoint, after, big_only)
    sink = RecordingSink()

    result = migrate(source, destination, MigrationOptions(remain_source=remain_source, **OPTIONS), abort, sink)  # type: ignore[arg-type]

    assert abort.requested, f"{checkpoint} was never reached"
    assert result.outcome is Outcome.ABORTED, result.error
    counts = assert_invariant(source, destination, workload.originals, remain_source)
    assert counts["untouched"] > 0
    assert counts["retained"] == 0  # a move is one unit per object: never left in both places by an abort
    assert not sink.still_open and not sink.still_intended
    assert cloud_b.client().list_multipart_uploads(Bucket=destination_bucket).get("Uploads", []) == []
    if checkpoint in ("after_create_multipart", "between_parts", "between_chunks"):
        assert sink.intents and len(sink.cleared) == len(sink.intents)
    if checkpoint in ("between_parts", "between_chunks"):
        assert sink.opened and len(sink.closed) == len(sink.opened)
    if remain_source:
        # Every object that reached the destination matches its source (rclone, one-way from the destination).
        _rclone_clean(rclone_check(cloud_b, f"{destination_bucket}/moved", cloud_a, f"{source_bucket}/data",
                                   "--one-way"))


def test_full_migration_then_rerun_skips_everything(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    destination_bucket = bucket_factory(cloud_b)
    source = open_(cloud_a, workload.bucket, PREFIX)
    destination = open_(cloud_b, destination_bucket, "copy/")
    sink = RecordingSink()

    result = migrate(source, destination, MigrationOptions(**OPTIONS), AbortSignal(), sink)  # type: ignore[arg-type]

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_migrated == len(workload.originals)
    _rclone_clean(rclone_check(cloud_a, f"{workload.bucket}/data", cloud_b, f"{destination_bucket}/copy",
                               "--download"))
    head = cloud_b.client().head_object(Bucket=destination_bucket, Key="copy/big-0.bin")
    assert head["ContentType"] == "application/x-test" and head["Metadata"] == {"origin": "cloud-a"}

    again = migrate(source, destination, MigrationOptions(**OPTIONS), AbortSignal(), RecordingSink())  # type: ignore[arg-type]
    assert again.outcome is Outcome.SUCCEEDED
    assert again.progress.objects_skipped == len(workload.originals) and again.progress.bytes_migrated == 0


def test_same_endpoint_uses_server_side_copy(
    cloud_a: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    destination_bucket = bucket_factory(cloud_a)
    source, destination = open_(cloud_a, workload.bucket, PREFIX), open_(cloud_a, destination_bucket, PREFIX)
    assert isinstance(source, S3Store) and isinstance(destination, S3Store)
    calls: dict[str, int] = {}

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    for store in (source, destination):
        # Each request on the wire, by either path of the backend (its client, its direct GET/PUT).
        store.client.meta.events.register("before-send.s3", lambda event_name, **_: count(event_name.rsplit(".", 1)[1]))

    result = migrate(source, destination, MigrationOptions(**OPTIONS), AbortSignal(), RecordingSink())  # type: ignore[arg-type]

    assert result.outcome is Outcome.SUCCEEDED, result.error
    # One CopyObject per object, large ones included (up to S3's 5 GiB single-copy limit): no parts.
    assert calls.get("CopyObject") == len(workload.originals)
    assert not {"GetObject", "PutObject", "UploadPart", "UploadPartCopy"} & set(calls), calls
    _rclone_clean(rclone_check(cloud_a, f"{workload.bucket}/data", cloud_a, f"{destination_bucket}/data"))


KILLED_CHILD = r"""
import os, sys, time
from datamover.backends import open_store
from datamover.backends.s3 import S3Config
from datamover.engine import AbortSignal, MigrationOptions, migrate

def cfg(side):
    env = lambda name: os.environ[f"DM_{side}_{name}"]
    return S3Config(bucket=env("BUCKET"), prefix=env("PREFIX"), endpoint=env("ENDPOINT"), region="us-east-1",
                    access_key_id=env("KEY"), secret_access_key=env("SECRET"), addressing_style="path")

class PrintingSink:
    def on_progress(self, progress): pass
    def on_upload_intent(self, i): pass
    def on_intent_cleared(self, i): pass
    def on_upload_opened(self, u): print(f"UPLOAD_OPENED {u.bucket} {u.key} {u.upload_id}", flush=True)
    def on_upload_closed(self, u): print(f"UPLOAD_CLOSED {u.bucket} {u.key} {u.upload_id}", flush=True)

def slow(name, key):
    if name == "between_chunks":
        time.sleep(0.2)  # keep the copy in the middle of its parts long enough to be killed there

options = MigrationOptions(part_size=5 * 1024 * 1024, multipart_threshold=5 * 1024 * 1024, concurrency=1,
                           part_concurrency=2)
migrate(open_store(cfg("SRC")), open_store(cfg("DST")), options, AbortSignal(on_checkpoint=slow), PrintingSink())
print("FINISHED", flush=True)
"""


def test_sigkill_mid_multipart_leaves_an_upload_the_recorded_id_can_abort(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    destination_bucket = bucket_factory(cloud_b)
    env = dict(os.environ)
    for side, server, bucket, prefix in (("SRC", cloud_a, workload.bucket, f"{PREFIX}big-0"),
                                         ("DST", cloud_b, destination_bucket, "")):
        env.update({f"DM_{side}_BUCKET": bucket, f"DM_{side}_PREFIX": prefix, f"DM_{side}_ENDPOINT": server.endpoint,
                    f"DM_{side}_KEY": server.access_key, f"DM_{side}_SECRET": server.secret_key})
    # Credentials go through the environment, never argv (visible in ps).
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("UPLOAD_OPENED"), line
        _, bucket, key, upload_id = line.split()
        destination = cloud_b.client()
        deadline = time.monotonic() + 30
        while not destination.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts"):
            assert time.monotonic() < deadline, "no part was uploaded"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    recorded = OpenUpload(bucket=bucket, key=key, upload_id=upload_id)
    open_ids = [u["UploadId"] for u in destination.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert open_ids == [upload_id]
    assert destination.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # no partial object is visible

    cleanup = close_leftovers(open_(cloud_b, bucket), [recorded])

    assert cleanup.closed == (recorded,)
    assert destination.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_unreachable_endpoint_fails_with_endpoint_and_bucket(cloud_b: S3Server, bucket_factory: BucketFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    source = open_store(S3Config(bucket="anything", endpoint=dead, region="us-east-1", access_key_id="k",
                                 secret_access_key="do-not-print-me", max_attempts=2, connect_timeout=2))
    result = migrate(source, open_(cloud_b, bucket_factory(cloud_b)), MigrationOptions(), AbortSignal(),
                     RecordingSink())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert dead in result.error and "bucket anything" in result.error and "unreachable" in result.error
    assert "do-not-print-me" not in result.error


def test_wrong_credentials_fail_fast_without_printing_the_secret(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    wrong = "wrong-secret-value-123"
    source = open_(cloud_a, workload.bucket, PREFIX, secret_access_key=wrong)
    began = time.monotonic()
    result = migrate(source, open_(cloud_b, bucket_factory(cloud_b)), MigrationOptions(), AbortSignal(),
                     RecordingSink())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert time.monotonic() - began < 10, "a permanent error was retried"
    assert cloud_a.endpoint in result.error and f"bucket {workload.bucket}" in result.error
    assert wrong not in result.error and cloud_a.secret_key not in result.error


def test_missing_bucket_fails_naming_it(cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory) -> None:
    result = migrate(open_(cloud_a, "no-such-bucket-here"), open_(cloud_b, bucket_factory(cloud_b)),
                     MigrationOptions(), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert "bucket does not exist" in result.error and "no-such-bucket-here" in result.error
    assert cloud_a.endpoint in result.error


def test_prefix_with_nothing_in_it_is_a_success_with_zero_objects(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    result = migrate(open_(cloud_a, workload.bucket, "no-such-prefix/"), open_(cloud_b, bucket_factory(cloud_b)),
                     MigrationOptions(), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED and result.error is None
    assert result.progress.objects_total == 0 and result.progress.listing_done


def test_the_janitor_lists_by_exact_key_under_a_folder_prefix(
    cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    bucket = bucket_factory(cloud_b)
    store = open_(cloud_b, bucket, "moved/")
    since = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ours = store.create_upload("moved/k", ObjectAttributes()).upload_id
    foreign = store.create_upload("moved/k2", ObjectAttributes())  # another key under the same folder

    cleanup = close_leftovers(store, intents=[UploadIntent("moved/k", since)])

    assert [u.upload_id for u in cleanup.aborted] == [ours] and cleanup.unresolved == ()
    left = cloud_b.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [foreign.upload_id]
    store.abort_upload(foreign)


def test_content_language_and_expires_survive_a_multipart_copy(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    headers = {"ContentType": "text/plain", "ContentLanguage": "de", "Expires": "Thu, 01 Jan 2099 00:00:00 GMT",
               "CacheControl": "no-cache", "ContentDisposition": "inline", "Metadata": {"owner": "ops"}}
    cloud_a.client().put_object(Bucket=source_bucket, Key="big", Body=os.urandom(11 * MiB), **headers)  # type: ignore[arg-type]
    source, destination = open_(cloud_a, source_bucket), open_(cloud_b, destination_bucket)
    assert migrate(source, destination, MigrationOptions(**OPTIONS), AbortSignal(),  # type: ignore[arg-type]
                   RecordingSink()).outcome is Outcome.SUCCEEDED
    head = cloud_b.client().head_object(Bucket=destination_bucket, Key="big")
    assert head["Metadata"] == {"owner": "ops"} and head["ContentLanguage"] == "de"
    assert head["CacheControl"] == "no-cache" and head["ContentDisposition"] == "inline"
    assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    again = migrate(source, destination, MigrationOptions(**OPTIONS), AbortSignal(),  # type: ignore[arg-type]
                    RecordingSink())
    assert again.progress.objects_skipped == 1


def test_a_blackholed_endpoint_fails_within_the_stall_timeout_naming_it(
    cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    with socket.socket() as hole:  # accepts TCP (the kernel completes the handshake) and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
        source = open_store(S3Config(bucket="anything", endpoint=endpoint, region="us-east-1", access_key_id="k",
                                     secret_access_key="do-not-print-me", stall_timeout=4))
        result = migrate(source, open_(cloud_b, bucket_factory(cloud_b)), MigrationOptions(stall_timeout=4),
                         AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert endpoint in result.error and "stallTimeoutSeconds=4" in result.error
    assert "do-not-print-me" not in result.error


def test_a_throttled_migration_follows_a_limit_changed_while_it_runs(
    cloud_a: S3Server, cloud_b: S3Server, workload: Workload, bucket_factory: BucketFactory,
) -> None:
    """At 64 KiB/s this workload would take over half an hour; lifting the limit mid-run lets it finish, exact."""
    destination_bucket = bucket_factory(cloud_b)
    source = open_(cloud_a, workload.bucket, PREFIX)
    destination = open_(cloud_b, destination_bucket, "copy/")
    throttle = Throttle(64 * 1024, 20)
    sink = RecordingSink()
    outcome: list[MigrationResult] = []
    run = threading.Thread(target=lambda: outcome.append(migrate(
        source, destination, MigrationOptions(**OPTIONS, throttle=throttle), AbortSignal(), sink)))  # type: ignore[arg-type]
    run.start()
    deadline = time.monotonic() + 120
    while throttle.waited == 0:  # the limit is holding the copy back
        assert run.is_alive() and time.monotonic() < deadline, "the throttle never made the migration wait"
        time.sleep(0.1)
    throttle.set(None, None)
    run.join(timeout=600)
    assert outcome and outcome[0].outcome is Outcome.SUCCEEDED, outcome
    _rclone_clean(rclone_check(cloud_a, f"{workload.bucket}/data", cloud_b, f"{destination_bucket}/copy",
                               "--download"))
    assert cloud_b.client().list_multipart_uploads(Bucket=destination_bucket).get("Uploads", []) == []
