"""Abort injected at every named checkpoint (moto): the engine stops there and the invariant holds."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator

import pytest

from datamover.backends.s3 import S3Store
from datamover.engine import CHECKPOINTS, AbortSignal, MigrationOptions, Outcome, migrate
from tests.unit import RecordingSink, assert_invariant, moto_s3, store

MiB = 1024 * 1024
OPTIONS = dict(part_size=5 * MiB, multipart_threshold=5 * MiB, chunk_size=256 * 1024, progress_interval=0,
               concurrency=2, part_concurrency=2)

# Which hit of each checkpoint to abort at: late enough that some work is done, early enough that some is not.
ABORT_AT = {
    "before_list_page": 1,  # the second page
    "before_object": 4,
    "after_create_multipart": 0,  # the first multipart upload, right after its create returned
    "between_parts": 1,
    "between_chunks": 12,
    "before_delete_source": 2,
}


@pytest.fixture
def workload() -> Iterator[tuple[S3Store, S3Store, dict[str, str]]]:
    with moto_s3():
        source, destination = store("src", "in/", "a", list_page_size=4), store("dst", "out/", "b")
        originals = {}
        bodies = [os.urandom(3000) for _ in range(8)] + [os.urandom(11 * MiB), os.urandom(16 * MiB + 3)]
        for index, body in enumerate(bodies):
            key = f"in/{'big' if len(body) > MiB else 'small'}-{index:02d}"
            source.client.put_object(Bucket="src", Key=key, Body=body)
            originals[key] = hashlib.md5(body).hexdigest()
        yield source, destination, originals


def test_the_checkpoint_names_are_the_ones_the_issue_asks_for() -> None:
    assert CHECKPOINTS == (
        "before_list_page", "before_object", "after_create_multipart", "between_parts", "between_chunks",
        "before_delete_source",
    )
    assert set(ABORT_AT) == set(CHECKPOINTS)


# before_delete_source is only reached when moving (remain_source=False).
CASES = [
    pytest.param(checkpoint, remain_source, id=f"{checkpoint}-{'copy' if remain_source else 'move'}")
    for checkpoint in CHECKPOINTS for remain_source in (True, False)
    if not (checkpoint == "before_delete_source" and remain_source)
]


@pytest.mark.parametrize(("checkpoint", "remain_source"), CASES)
def test_abort_at_checkpoint_leaves_every_object_untouched_or_verified(
    workload: tuple[S3Store, S3Store, dict[str, str]], checkpoint: str, remain_source: bool,
) -> None:
    source, destination = workload[0], workload[1]
    originals = workload[2]
    abort = AbortSignal.at_checkpoint(checkpoint, after=ABORT_AT[checkpoint])
    sink = RecordingSink()

    result = migrate(source, destination, MigrationOptions(remain_source=remain_source, **OPTIONS), abort, sink)

    assert abort.requested, f"{checkpoint} was never reached"
    assert result.outcome is Outcome.ABORTED, result.error
    assert result.progress.state == "aborted" and result.progress.in_flight == ()
    counts = assert_invariant(source, destination, originals, remain_source)
    assert counts["untouched"] > 0, "abort came too late to test anything"
    assert not sink.still_open, "an announced upload was never closed"
    # The sink hears of an upload's close only if it heard of its opening (a stop right after create: the intent).
    assert all(upload in sink.opened for upload in sink.closed), "announced closed, never announced opened"
    assert not sink.still_intended, "an upload intent was never cleared"
    assert result.progress.objects_migrated == counts["migrated"]
    # A move is one unit per object: abort at before_delete_source finishes that delete, nothing is in both places.
    assert counts["retained"] == 0 and result.progress.objects_retained == 0
    if checkpoint in ("after_create_multipart", "between_parts", "between_chunks"):
        assert sink.intents, "no multipart upload was in flight when abort came"
    if checkpoint in ("between_parts", "between_chunks"):
        assert sink.opened, "no multipart upload was in flight when abort came"

    # A re-run resumes: already-verified objects are skipped, the rest are copied.
    rerun = migrate(source, destination, MigrationOptions(remain_source=remain_source, **OPTIONS), AbortSignal(),
                    RecordingSink())
    assert rerun.outcome is Outcome.SUCCEEDED, rerun.error
    if remain_source:
        assert rerun.progress.objects_skipped == counts["migrated"]
    else:  # moved objects are gone from the source
        assert rerun.progress.objects_total == len(originals) - counts["migrated"]
    final = assert_invariant(source, destination, originals, remain_source)
    assert final["untouched"] == 0 and final["retained"] == 0


def test_abort_from_another_thread_stops_a_large_download_within_a_chunk(
    workload: tuple[S3Store, S3Store, dict[str, str]],
) -> None:
    source, destination, originals = workload
    chunks_after_abort: list[str] = []
    abort = AbortSignal(on_checkpoint=lambda name, key: chunks_after_abort.append(name) if abort.requested else None)
    started = threading.Event()
    threading.Thread(target=lambda: (started.wait(10), abort.request("watch thread: spec.abort=true")),
                     daemon=True).start()

    def go() -> None:
        started.set()

    sink = RecordingSink()
    sink.on_upload_opened = lambda upload: (RecordingSink.on_upload_opened(sink, upload), go())  # type: ignore[method-assign]
    began = time.monotonic()
    result = migrate(source, destination, MigrationOptions(**OPTIONS), abort, sink)

    assert result.outcome is Outcome.ABORTED and time.monotonic() - began < 10
    assert abort.reason == "watch thread: spec.abort=true"
    # Each running part stops at its next checkpoint: no thread reads more than one chunk after the request.
    assert chunks_after_abort.count("between_chunks") <= OPTIONS["part_concurrency"] + OPTIONS["concurrency"]
    assert_invariant(source, destination, originals, remain_source=True)
    assert not sink.still_open


def test_abort_at_before_delete_source_finishes_that_move(
    workload: tuple[S3Store, S3Store, dict[str, str]],
) -> None:
    source, destination, originals = workload
    seen: list[str] = []

    def hook(checkpoint: str, key: str | None) -> None:
        if checkpoint == "before_delete_source" and not abort.requested:
            assert key is not None
            seen.append(key)
            abort.request("test: abort while the first verified object is about to lose its source")

    abort = AbortSignal(on_checkpoint=hook)
    result = migrate(source, destination, MigrationOptions(remain_source=False, **OPTIONS), abort, RecordingSink())

    assert result.outcome is Outcome.ABORTED, result.error
    [key] = seen
    destination_key = destination.prefix + key[len(source.prefix):]
    assert source.stat(key) is None, "the source of a verified copy was kept after abort"
    assert destination.stat(destination_key) is not None
    counts = assert_invariant(source, destination, originals, remain_source=False)
    assert counts["retained"] == 0 and counts["migrated"] >= 1
