"""The engine against moto: strategies, metadata, skip-identical, move semantics, sharding, progress, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from datamover.backends.base import S3_LIMITS, Capabilities, ErrorKind, ObjectAttributes, StoreError
from datamover.backends.s3 import S3Store
from datamover.engine import (
    AbortSignal,
    MemoryLedgerStore,
    MigrationOptions,
    OpenUpload,
    Outcome,
    close_leftovers,
    migrate,
)
from datamover.engine.multipart import choose_part_size, part_ranges
from datamover.engine.verify import composite_etag
from tests.unit import RecordingSink, moto_s3, open_uploads, requests_of, store

MiB = 1024 * 1024
SMALL = MigrationOptions(part_size=5 * MiB, multipart_threshold=5 * MiB, chunk_size=256 * 1024, progress_interval=0)

AWKWARD_KEYS = ["plain.txt", "with space.txt", "ünïcødé/файл.bin", "runs//of///slashes", "dir/", "empty"]


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def put(target: S3Store, key: str, body: bytes, **extra: object) -> None:
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body, **extra)  # type: ignore[arg-type]


def read(target: S3Store, key: str) -> bytes | None:
    try:
        return target.client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    except target.client.exceptions.NoSuchKey:
        return None


def keys(target: S3Store) -> set[str]:
    pages = target.client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_copies_awkward_keys_zero_byte_and_multipart_with_prefixes(moto: None) -> None:
    source, destination = store("src", "in/", "a"), store("dst", "out/x/", "b")
    bodies = {f"in/{key}": (os.urandom(1000) if key not in ("empty", "dir/") else b"") for key in AWKWARD_KEYS}
    bodies["in/big.bin"] = os.urandom(11 * MiB + 7)
    for key, body in bodies.items():
        put(source, key, body)
    put(source, "elsewhere/not-mine", b"outside the prefix")

    sink = RecordingSink()
    result = migrate(source, destination, SMALL, AbortSignal(), sink)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert keys(destination) == {"out/x/" + key.removeprefix("in/") for key in bodies}
    for key, body in bodies.items():
        assert read(destination, "out/x/" + key.removeprefix("in/")) == body
    assert result.progress.objects_migrated == len(bodies)
    assert result.progress.bytes_migrated == sum(map(len, bodies.values()))
    assert result.progress.listing_done and result.progress.state == "succeeded"
    assert sink.opened and not sink.still_open  # the multipart upload was announced and closed
    assert sink.progress[-1] == result.progress


def test_metadata_is_exact_on_every_strategy(moto: None) -> None:
    headers = {
        "ContentType": "text/csv", "ContentEncoding": "gzip", "CacheControl": "max-age=60",
        "ContentDisposition": 'attachment; filename="r.csv"', "ContentLanguage": "de-CH",
        "Expires": "Wed, 21 Oct 2099 07:28:00 GMT", "Metadata": {"owner": "ops", "k-2": "v 2"},
    }
    source = store("src", "", "a")
    put(source, "small", b"x" * 100, **headers)
    put(source, "large", os.urandom(6 * MiB), **headers)
    for destination in (store("streamed", "", "b"), store("server-side", "", "a")):
        result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
        assert result.outcome is Outcome.SUCCEEDED, result.error
        for key in ("small", "large"):
            head = destination.client.head_object(Bucket=destination.bucket, Key=key)
            assert head["ContentType"] == "text/csv"
            assert head["ContentEncoding"] == "gzip"
            assert head["CacheControl"] == "max-age=60"
            assert head["ContentDisposition"] == 'attachment; filename="r.csv"'
            assert head["ContentLanguage"] == "de-CH"
            assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Wed, 21 Oct 2099 07:28:00 GMT"
            assert head["Metadata"] == {"owner": "ops", "k-2": "v 2"}  # exactly: nothing of ours added


def test_rerun_skips_identical_objects_and_recopies_changed_ones(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "same", b"1" * 10)
    put(source, "big", os.urandom(11 * MiB))
    put(source, "changes", b"old")
    assert migrate(source, destination, SMALL, AbortSignal(), RecordingSink()).outcome is Outcome.SUCCEEDED
    put(source, "changes", b"new content")

    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED
    assert (result.progress.objects_skipped, result.progress.objects_migrated) == (2, 1)
    assert read(destination, "changes") == b"new content"


def test_move_deletes_source_only_after_verification(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    bodies = {"a": b"alpha", "b": os.urandom(11 * MiB)}
    for key, body in bodies.items():
        put(source, key, body)
    order: list[tuple[str, str | None]] = []

    def hook(checkpoint: str, key: str | None) -> None:
        if checkpoint == "before_delete_source":
            assert key is not None
            order.append((key, hashlib.md5(read(destination, key) or b"").hexdigest()))

    result = migrate(source, destination, MigrationOptions(**{**SMALL.__dict__, "remain_source": False}),
                     AbortSignal(on_checkpoint=hook), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert keys(source) == set()
    # At the moment each source was about to be deleted, its destination copy was already complete.
    assert sorted(order) == sorted((key, hashlib.md5(body).hexdigest()) for key, body in bodies.items())


def test_a_failed_source_delete_is_reported_as_in_both_places(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "stays", b"alpha")

    def failing_delete(key: str) -> None:
        raise StoreError(ErrorKind.TRANSIENT, f"DeleteObject failed on bucket src key {key!r}: SlowDown")

    source.delete = failing_delete  # type: ignore[method-assign]
    options = MigrationOptions(**{**SMALL.__dict__, "remain_source": False})
    result = migrate(source, destination, options, AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED
    assert result.retained_keys == ("stays",) and result.progress.retained_keys == ("stays",)
    assert result.progress.objects_retained == 1 and result.progress.objects_failed == 0
    assert result.error is not None and "both places" in result.error
    assert read(source, "stays") == b"alpha" and read(destination, "stays") == b"alpha"


def test_move_of_an_already_identical_object_deletes_the_source(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "k", b"same")
    put(destination, "k", b"same")
    options = MigrationOptions(**{**SMALL.__dict__, "remain_source": False})
    result = migrate(source, destination, options, AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED
    assert keys(source) == set() and read(destination, "k") == b"same"


def test_server_side_copy_is_one_copy_object_per_object_up_to_the_single_copy_limit(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "a")
    put(source, "small", b"s" * 10)
    put(source, "large", os.urandom(11 * MiB))
    calls = requests_of(source, destination)

    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED
    # One request per object: no HEAD before the copy, and none after (the answer carries the source's ETag).
    per_operation = {name: calls.count(name) for name in set(calls)}
    assert per_operation == {"HeadBucket": 2, "ListObjectsV2": 2, "CopyObject": 2}
    assert read(destination, "large") == read(source, "large")


def test_server_side_copy_above_the_single_copy_limit_goes_part_by_part(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "a")
    # A store that copies at most 8 MiB in one request (the limit is the store's, declared as data).
    destination.capabilities = Capabilities(limits=dataclasses.replace(S3_LIMITS, max_single_copy=8 * MiB),
                                            part_layout=True)
    put(source, "small", b"s" * 10)
    put(source, "large", os.urandom(11 * MiB))
    calls = requests_of(source, destination)

    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED
    assert calls.count("CopyObject") == 1 and calls.count("UploadPartCopy") >= 2
    assert not {"GetObject", "PutObject", "UploadPart"} & set(calls)
    assert read(destination, "large") == read(source, "large")


def test_workers_sharing_a_ledger_split_one_listing_and_cover_every_key_once(moto: None) -> None:
    all_keys = [f"k/{i:04d}" for i in range(54)] + AWKWARD_KEYS
    source, destination = store("src", "", "a", list_page_size=7), store("dst", "", "b")
    for key in all_keys:
        put(source, key, key.encode())
    lists: list[str] = []
    source.client.meta.events.register("before-call.s3.ListObjectsV2", lambda model, **_: lists.append(model.name))
    ledger = MemoryLedgerStore()
    results = []
    # One after the other: the first worker claims every page, the others find the listing finished.
    for index in range(3):
        options = MigrationOptions(**{**SMALL.__dict__, "shard_index": index, "shard_count": 3})
        results.append(migrate(source, destination, options, AbortSignal(), RecordingSink(), ledger))
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 3
    assert [r.progress.objects_migrated for r in results] == [60, 0, 0]
    assert keys(destination) == set(all_keys)
    assert len(lists) == 9  # ceil(60 / 7): each page listed once for the whole job


def test_workers_without_a_shared_ledger_are_refused(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    options = MigrationOptions(**{**SMALL.__dict__, "shard_index": 1, "shard_count": 2})
    with pytest.raises(ValueError, match="ledger"):
        migrate(source, destination, options, AbortSignal(), RecordingSink())


def test_progress_is_reported_while_running_and_throttled(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    for index in range(20):
        put(source, f"k{index}", b"x")
    fast, slow = RecordingSink(), RecordingSink()
    migrate(source, destination, SMALL, AbortSignal(), fast)
    throttled = MigrationOptions(**{**SMALL.__dict__, "progress_interval": 3600})
    migrate(source, store("dst2", "", "b"), throttled, AbortSignal(), slow)
    assert len(fast.progress) > 20
    assert any(p.in_flight for p in fast.progress)
    # Throttled: only state changes and the final snapshot get through.
    assert len(slow.progress) <= 4 and slow.progress[-1].objects_migrated == 20


def test_empty_prefix_is_a_success_with_zero_objects(moto: None) -> None:
    source = store("src", "nothing-here/", "a")
    put(source, "other/key", b"x")
    result = migrate(source, store("dst", "", "b"), SMALL, AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED and result.error is None
    assert result.progress.objects_total == 0 and result.progress.listing_done


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_missing_bucket_fails_with_endpoint_and_bucket_named(moto: None, missing: str) -> None:
    source = store("src", "", "a", create=missing != "source")
    destination = store("dst", "", "b", create=missing != "destination")
    if missing != "source":
        put(source, "k", b"x")
    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "bucket does not exist" in result.error
    assert f"bucket {'src' if missing == 'source' else 'dst'}" in result.error
    assert "endpoint AWS S3" in result.error


def test_abort_before_start_touches_nothing(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "k", b"x")
    abort = AbortSignal()
    abort.request("user asked")
    result = migrate(source, destination, SMALL, abort, RecordingSink())
    assert result.outcome is Outcome.ABORTED and keys(destination) == set()


def test_source_changed_during_copy_fails_that_object_only(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "stable", b"s")
    put(source, "moving", os.urandom(11 * MiB))
    swapped = False

    def hook(checkpoint: str, key: str | None) -> None:
        nonlocal swapped
        if checkpoint == "between_parts" and key == "moving" and not swapped:
            swapped = True
            put(source, "moving", os.urandom(11 * MiB))

    sink = RecordingSink()
    result = migrate(source, destination, SMALL, AbortSignal(on_checkpoint=hook), sink)
    assert result.outcome is Outcome.FAILED
    assert result.failed_keys == ("moving",)
    assert result.error is not None and "PreconditionFailed" in result.error and "'moving'" in result.error
    assert read(destination, "stable") == b"s" and read(destination, "moving") is None
    assert not open_uploads(destination) and not sink.still_open


def test_the_janitor_closes_recorded_uploads_and_tolerates_gone_ones(moto: None) -> None:
    destination = store("dst", "", "b")
    recorded = [destination.create_upload("k", ObjectAttributes()), OpenUpload("dst", "gone", "no-such-upload-id")]
    closed = close_leftovers(destination, recorded).closed
    assert recorded[0] in closed
    assert not open_uploads(destination)


def test_part_size_grows_so_no_object_needs_more_than_10000_parts() -> None:
    assert choose_part_size(100 * MiB, 16 * MiB, S3_LIMITS) == 16 * MiB
    grown = choose_part_size(5 * 1024**4, 16 * MiB, S3_LIMITS)  # 5 TiB
    assert grown % MiB == 0 and -(-5 * 1024**4 // grown) <= 10_000
    ranges = part_ranges(11 * MiB + 1, 5 * MiB)
    assert ranges == [(1, 0, 5 * MiB - 1), (2, 5 * MiB, 10 * MiB - 1), (3, 10 * MiB, 11 * MiB)]
    assert composite_etag([hashlib.md5(b"a").digest()]).endswith("-1")


def test_options_reject_parts_below_s3_minimum() -> None:
    with pytest.raises(ValueError, match="5 MiB"):
        MigrationOptions(part_size=1 * MiB)
    with pytest.raises(ValueError, match="shard_index"):
        MigrationOptions(shard_index=2, shard_count=2)


def test_every_transition_is_one_log_line_naming_shard_and_key(moto: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="datamover")
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "with space", b"x")
    migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    lines = [r.getMessage() for r in caplog.records if "event=transition machine=object" in r.getMessage()]
    assert lines == [
        f'event=transition machine=object shard=0/1 key="with space" from={a} to={b} on={e}' + s
        for a, b, e, s in [("pending", "checking", "start", ""), ("checking", "copying", "differs", ""),
                           ("copying", "verifying", "copied", " strategy=single"),
                           ("verifying", "migrated", "verified", " strategy=single")]
    ]
    assert not any("secret-" in r.getMessage() for r in caplog.records)


def test_small_objects_cost_one_get_and_one_put_and_reruns_cost_no_request_per_object(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    for index in range(30):
        put(source, f"k{index:02d}", b"x" * index)
    calls = requests_of(source, destination)

    assert migrate(source, destination, SMALL, AbortSignal(), RecordingSink()).outcome is Outcome.SUCCEEDED
    per_operation = {name: calls.count(name) for name in set(calls)}
    # HeadBucket x2 (access check), one listing page per side, then GET + PUT per object: no HEAD per object.
    assert per_operation == {"HeadBucket": 2, "ListObjectsV2": 2, "GetObject": 30, "PutObject": 30}

    calls.clear()
    rerun = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert rerun.progress.objects_skipped == 30
    # Same size is never enough: one HEAD per side compares content headers, user metadata and ETags exactly.
    per_operation = {name: calls.count(name) for name in set(calls)}
    assert per_operation == {"HeadBucket": 2, "ListObjectsV2": 2, "HeadObject": 60}


def test_without_listing_permission_on_the_destination_objects_are_checked_with_head(moto: None) -> None:
    from tests.unit.test_backend_s3 import fail_first

    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "k", b"x")
    put(destination, "k", b"x")
    fail_first(destination, "ListObjectsV2", 100, 403, "AccessDenied")
    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_skipped == 1


def test_large_objects_report_bytes_in_progress_part_by_part(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    put(source, "big", os.urandom(16 * MiB))
    sink = RecordingSink()
    result = migrate(source, destination, SMALL, AbortSignal(), sink)
    assert result.outcome is Outcome.SUCCEEDED
    seen = {p.bytes_in_progress for p in sink.progress}
    assert max(seen) == 16 * MiB and any(0 < value < 16 * MiB for value in seen)
    assert result.progress.bytes_in_progress == 0 and result.progress.bytes_migrated == 16 * MiB


def test_listing_stays_at_most_one_page_ahead_of_the_copies(moto: None) -> None:
    source, destination = store("src", "", "a", list_page_size=50), store("dst", "", "b", list_page_size=50)
    for index in range(400):
        put(source, f"k{index:04d}", b"x")
    sink = RecordingSink()
    listed = 0
    ahead: list[int] = []
    original = source.list_page

    def list_page(prefix: str, token: str | None, start_after: str | None = None) -> Any:
        nonlocal listed
        with sink.lock:
            last = sink.progress[-1] if sink.progress else None
        done = last.objects_migrated if last else 0
        ahead.append(listed - done)
        page = original(prefix, token, start_after)
        listed += len(page.objects)
        return page

    source.list_page = list_page  # type: ignore[method-assign]
    options = MigrationOptions(**{**SMALL.__dict__, "concurrency": 4})
    assert migrate(source, destination, options, AbortSignal(), sink).outcome is Outcome.SUCCEEDED
    # Before each new page, everything but the objects in flight has been copied: memory does not grow with the
    # bucket (a 1-million-key bucket holds one page of keys in memory, not a million).
    assert len(ahead) == 8 and max(ahead) <= options.concurrency + 1
