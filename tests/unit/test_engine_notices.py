"""Tests that notice a broken data-safety core (moto): wrong bytes, wrong metadata or a same-size different object at
the destination must each end in the outcome a user can rely on, in a copy and in a move.

Each test here fails if one safety step is removed: verification made a no-op, skip-identical reduced to sizes, the
delete of an unverified destination copy dropped, or metadata copied inexactly (see the mutation-testing notes in
the failure-matrix report).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from datamover.backends.base import ObjectAttributes, OpenUpload
from datamover.backends.s3 import S3Store
from datamover.engine import AbortSignal, MigrationOptions, Outcome, Progress, migrate
from tests.unit import RecordingSink, assert_invariant, moto_s3, open_uploads, store

MiB = 1024 * 1024
BASE = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "chunk_size": 256 * 1024, "progress_interval": 0}
MODES = [pytest.param(True, id="copy"), pytest.param(False, id="move")]
HEADERS: dict[str, Any] = {
    "ContentType": "text/csv", "ContentEncoding": "gzip", "CacheControl": "max-age=60",
    "ContentDisposition": 'attachment; filename="r.csv"', "ContentLanguage": "fr",
    "Expires": "Wed, 21 Oct 2037 07:28:00 GMT", "Metadata": {"owner": "ops", "k-2": "v 2"},
}
EXACT_HEADERS = ("ContentType", "ContentEncoding", "CacheControl", "ContentDisposition", "ContentLanguage")


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def options(remain_source: bool, **extra: Any) -> MigrationOptions:
    return MigrationOptions(remain_source=remain_source, **{**BASE, **extra})


def put(target: S3Store, key: str, body: bytes, **extra: Any) -> None:
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body, **extra)


def put_multipart(target: S3Store, key: str, body: bytes) -> None:
    """Store `body` as a multipart object (5 MiB parts), so its ETag is a composite "-N"."""
    client = target.client
    upload_id = client.create_multipart_upload(Bucket=target.bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), 5 * MiB), start=1):
        etag = client.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                  Body=body[start:start + 5 * MiB])["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})


def read(target: S3Store, key: str) -> bytes | None:
    try:
        return target.client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    except target.client.exceptions.NoSuchKey:
        return None


def flipped(body: bytes) -> bytes:
    """Same size, different bytes."""
    return bytes([body[0] ^ 0xFF]) + body[1:] if body else b"x"


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()



# -- a destination that damages what it is given, between write and verify ---------------------------------------

VICTIM = "victim"


def corrupt_single_put(destination: S3Store) -> None:
    original = destination.put

    def put_damaged(key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        if key != VICTIM:
            return original(key, body, attributes, content_md5)
        bad = flipped(body)
        return original(key, bad, attributes, md5_b64(bad))  # the store stores (and reports) other bytes

    destination.put = put_damaged  # type: ignore[method-assign]


def corrupt_one_part(destination: S3Store) -> None:
    original = destination.upload_part

    def upload_damaged(upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        if upload.key == VICTIM and part_number == 2:
            body = flipped(body)
            content_md5 = md5_b64(body)
        return original(upload, part_number, body, content_md5)

    destination.upload_part = upload_damaged  # type: ignore[method-assign]


def overwrite_after_complete(destination: S3Store) -> None:
    """After the multipart upload completes and before verification, another writer puts a same-size object."""
    original = destination.complete_upload

    def complete_then_overwrite(upload: OpenUpload, parts: Any) -> str:
        etag = original(upload, parts)
        size = destination.client.head_object(Bucket=destination.bucket, Key=upload.key)["ContentLength"]
        destination.client.put_object(Bucket=destination.bucket, Key=upload.key, Body=os.urandom(size))
        return etag

    destination.complete_upload = complete_then_overwrite  # type: ignore[method-assign]


DAMAGE = {
    "single-put-wrong-bytes": (corrupt_single_put, 3000),
    "multipart-part-wrong-bytes": (corrupt_one_part, 6 * MiB),
    "same-size-object-before-verify": (overwrite_after_complete, 6 * MiB),
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("remain_source", MODES)
def test_a_copy_that_does_not_hold_the_source_bytes_fails_and_is_removed(
    moto: None, damage: str, remain_source: bool,
) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    make_damage, size = DAMAGE[damage]
    body = os.urandom(size)
    put(source, "victim", body)
    put(source, "bystander", b"fine")
    make_damage(destination)

    sink = RecordingSink()
    result = migrate(source, destination, options(remain_source), AbortSignal(), sink)

    assert result.outcome is Outcome.FAILED, "a damaged copy was accepted as verified"
    assert result.failed_keys == ("victim",)
    assert read(destination, "victim") is None, "the unverified (wrong) copy was left at the destination"
    assert read(source, "victim") == body, "the source of a copy that failed verification is gone"
    assert read(destination, "bystander") == b"fine"
    assert open_uploads(destination) == [] and not sink.still_open


# -- pre-existing objects at the destination that only look identical --------------------------------------------

PREEXISTING = {
    "same-size-other-bytes-single": (3000, False),
    "same-size-other-bytes-multipart": (6 * MiB, True),
}


@pytest.mark.parametrize("case", PREEXISTING)
@pytest.mark.parametrize("remain_source", MODES)
def test_a_same_size_different_object_at_the_destination_is_replaced_not_skipped(
    moto: None, case: str, remain_source: bool,
) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    size, multipart = PREEXISTING[case]
    body, impostor = os.urandom(size), os.urandom(size)
    (put_multipart if multipart else put)(source, "k", body)
    (put_multipart if multipart else put)(destination, "k", impostor)

    result = migrate(source, destination, options(remain_source), AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_skipped == 0, "a different object was taken for identical"
    assert read(destination, "k") == body
    assert read(source, "k") == (body if remain_source else None)


def _exact(source: S3Store, destination: S3Store, key: str) -> None:
    want = source.client.head_object(Bucket=source.bucket, Key=key)
    got = destination.client.head_object(Bucket=destination.bucket, Key=key)
    for name in EXACT_HEADERS:
        assert got.get(name) == want.get(name), f"{key}: {name} {got.get(name)!r}, source has {want.get(name)!r}"
    wanted_expires = want["ResponseMetadata"]["HTTPHeaders"].get("expires")
    assert got["ResponseMetadata"]["HTTPHeaders"].get("expires") == wanted_expires, f"{key}: Expires differs"
    assert got["Metadata"] == want["Metadata"], f"{key}: user metadata {got['Metadata']} != {want['Metadata']}"


@pytest.mark.parametrize("remain_source", MODES)
def test_same_bytes_with_wrong_metadata_at_the_destination_end_exact(moto: None, remain_source: bool) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    body = os.urandom(2000)
    put(source, "k", body, **HEADERS)
    put(destination, "k", body, ContentType="application/octet-stream", Metadata={"owner": "someone-else"})
    reference = store("ref", "", "a")
    put(reference, "k", body, **HEADERS)  # what the source looked like, for the move case

    result = migrate(source, destination, options(remain_source), AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert read(destination, "k") == body
    _exact(reference, destination, "k")
    assert read(source, "k") == (body if remain_source else None)


@pytest.mark.parametrize("server_side", [pytest.param(False, id="streamed"), pytest.param(True, id="server-side")])
def test_copies_carry_exactly_the_source_headers_and_metadata_nothing_of_ours(moto: None, server_side: bool) -> None:
    source = store("src", "", "a")
    destination = store("dst", "", "a" if server_side else "b")
    put(source, "small", b"x" * 100, **HEADERS)
    put(source, "large", os.urandom(6 * MiB), **HEADERS)
    put(source, "bare", os.urandom(6 * MiB))

    result = migrate(source, destination, options(True), AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    for key in ("small", "large", "bare"):
        _exact(source, destination, key)
    rerun = migrate(source, destination, options(True), AbortSignal(), RecordingSink())
    assert rerun.progress.objects_skipped == 3, "exact copies must still be recognised as done"


# -- abort while listing, with work in flight ----------------------------------------------------------------------

@pytest.mark.parametrize("remain_source", MODES)
def test_abort_at_before_list_page_with_objects_in_flight(moto: None, remain_source: bool) -> None:
    source, destination = store("src", "in/", "a", list_page_size=2), store("dst", "out/", "b")
    originals = {}
    bodies = [os.urandom(6 * MiB), os.urandom(6 * MiB)] + [os.urandom(3000) for _ in range(6)]
    for index, body in enumerate(bodies):
        key = f"in/{index:02d}"  # the large ones sort first: in flight when the second page is asked for
        put(source, key, body)
        originals[key] = hashlib.md5(body).hexdigest()
    sink = RecordingSink()
    in_flight_at_abort: list[tuple[str, ...]] = []

    def last() -> Progress | None:
        with sink.lock:
            return sink.progress[-1] if sink.progress else None

    def hook(name: str, key: str | None) -> None:
        progress = last()
        if name == "before_list_page" and not abort.requested and progress and progress.in_flight:
            in_flight_at_abort.append(progress.in_flight)
            abort.request("test: abort while listing with objects in flight")

    abort = AbortSignal(on_checkpoint=hook)
    result = migrate(source, destination, options(remain_source, concurrency=2, part_concurrency=2), abort, sink)

    assert in_flight_at_abort, "no listing page was requested while objects were in flight"
    assert result.outcome is Outcome.ABORTED, result.error
    counts = assert_invariant(source, destination, originals, remain_source)
    assert counts["untouched"] > 0, "the abort came after everything was listed"
    assert not sink.still_open and open_uploads(destination) == []
    if not remain_source:
        assert counts["retained"] == 0, "an aborted move left verified objects in both places"


# -- the janitor: what it reports as closed is what the caller forgets -------------------------------------------

def test_the_janitor_reports_closed_exactly_the_aborted_and_the_already_gone(moto: None) -> None:
    from datamover.backends.base import ErrorKind, StoreError
    from datamover.engine import close_leftovers

    destination = store("dst", "", "b")
    live = destination.create_upload("live", ObjectAttributes())
    gone = OpenUpload("dst", "gone", "no-such-upload-id")
    cleanup = close_leftovers(destination, [live, gone])
    assert cleanup.closed == (live, gone) and cleanup.still_open == ()
    assert open_uploads(destination) == []

    # An upload the store refuses to abort must stay recorded (not reported closed), so the janitor tries again.
    stuck = destination.create_upload("stuck", ObjectAttributes())

    def refuse(upload: OpenUpload) -> None:
        raise StoreError(ErrorKind.TRANSIENT, "AbortMultipartUpload failed: endpoint unreachable after retries")

    destination.abort_upload = refuse  # type: ignore[method-assign]
    cleanup = close_leftovers(destination, [stuck])
    assert cleanup.closed == () and cleanup.still_open == (stuck,)
    assert [u["UploadId"] for u in open_uploads(destination)] == [stuck.upload_id]


def test_a_server_side_copy_overwritten_before_verify_fails_and_is_removed(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "a")  # same credentials: CopyObject
    body = os.urandom(3000)
    put(source, VICTIM, body)
    original = destination.copy_object

    def copy_then_overwrite(*args: Any, **kwargs: Any) -> str:
        original(*args, **kwargs)
        put(destination, VICTIM, flipped(body))  # another writer, between the copy and its verification
        # An answer without the source's ETag (as from a store that encrypts) is checked by HEAD: the copy's answer
        # alone proves a copy only when it carries the source's very ETag, like a PUT's answer its MD5.
        return "0" * 32

    destination.copy_object = copy_then_overwrite  # type: ignore[method-assign]
    result = migrate(source, destination, options(False), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED and result.failed_keys == (VICTIM,)
    assert read(destination, VICTIM) is None and read(source, VICTIM) == body


@pytest.mark.parametrize("remain_source", MODES)
def test_without_destination_listing_missing_and_impostor_objects_are_still_copied(
    moto: None, remain_source: bool,
) -> None:
    from tests.unit.test_backend_s3 import fail_first

    source, destination = store("src", "", "a"), store("dst", "", "b")
    bodies = {"absent": os.urandom(2000), "impostor": os.urandom(2000)}
    for key, body in bodies.items():
        put(source, key, body)
    put(destination, "impostor", os.urandom(2000))  # same size, other bytes
    fail_first(destination, "ListObjectsV2", 100, 403, "AccessDenied")  # checked with HEAD, object by object
    result = migrate(source, destination, options(remain_source), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_skipped == 0
    for key, body in bodies.items():
        assert read(destination, key) == body
        assert read(source, key) == (body if remain_source else None)
