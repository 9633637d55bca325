"""Upload intents (moto): recorded before every create, a lost create leaves no second upload, cleanup by key.

Also exact copies: the multipart layout of the source, skip-identical without foreign metadata, and never on size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from datamover.backends.base import ErrorKind, ObjectAttributes, StoreError
from datamover.backends.s3 import S3Store
from datamover.engine import (
    AbortSignal,
    MigrationOptions,
    Outcome,
    UploadIntent,
    close_leftovers,
    migrate,
)
from tests.unit import REGION, RecordingSink, moto_s3, open_uploads, requests_of, store

MiB = 1024 * 1024
SMALL = MigrationOptions(part_size=5 * MiB, multipart_threshold=5 * MiB, chunk_size=256 * 1024, progress_interval=0)


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def calls_of(target: S3Store) -> list[str]:
    return requests_of(target)



def put_multipart(target: S3Store, key: str, parts: list[bytes], **extra: Any) -> str:
    client = target.client
    upload_id = client.create_multipart_upload(Bucket=target.bucket, Key=key, **extra)["UploadId"]
    etags = [client.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body)["ETag"]
             for n, body in enumerate(parts, start=1)]
    return client.complete_multipart_upload(
        Bucket=target.bucket, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )["ETag"].strip('"')


def test_the_intent_is_recorded_before_the_create_and_cleared_after_complete(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="big", Body=os.urandom(11 * MiB))
    sink = RecordingSink()
    destination.create_client.meta.events.register(
        "before-call.s3.CreateMultipartUpload", lambda **_: sink.events.append(("create", "big")))
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)

    result = migrate(source, destination, SMALL, AbortSignal(), sink)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert sink.events == [("intent", "big"), ("create", "big"), ("opened", "big"), ("closed", "big"),
                           ("cleared", "big")]
    [intent] = sink.intents
    assert intent.key == "big" and intent.since.tzinfo is not None and intent.since.microsecond == 0
    assert before <= intent.since <= dt.datetime.now(dt.UTC)
    assert not open_uploads(destination)


def test_a_sink_that_cannot_record_the_intent_stops_the_create(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="big", Body=os.urandom(11 * MiB))
    source.client.put_object(Bucket="src", Key="small", Body=b"s")
    calls = calls_of(destination)

    class Refusing(RecordingSink):
        def on_upload_intent(self, intent: UploadIntent) -> None:
            raise RuntimeError("API server unreachable")

    result = migrate(source, destination, SMALL, AbortSignal(), Refusing())

    assert result.outcome is Outcome.FAILED and result.failed_keys == ("big",)
    assert result.error is not None and "upload intent" in result.error and "'big'" in result.error
    assert "CreateMultipartUpload" not in calls
    assert not open_uploads(destination)
    assert destination.stat("small") is not None  # only that object failed


def test_create_multipart_is_never_retried_by_botocore(moto: None) -> None:
    from tests.unit.test_backend_s3 import fail_first

    destination = store("dst", "", "b", max_attempts=5)
    destination.client = destination.create_client  # fail_first hooks .client: point it at the create client
    attempts = fail_first(destination, "CreateMultipartUpload", 1, 503, "SlowDown")
    with pytest.raises(StoreError) as raised:
        destination.create_upload("k", ObjectAttributes())
    assert attempts == ["CreateMultipartUpload"] and raised.value.kind is ErrorKind.TRANSIENT


def test_a_lost_create_response_leaves_exactly_one_upload_which_is_completed(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    body = os.urandom(11 * MiB)
    source.client.put_object(Bucket="src", Key="big", Body=body, ContentType="application/x-big")
    created_behind_our_back: list[str] = []

    def lose_first_response(request: Any, **_: Any) -> None:
        if created_behind_our_back:
            return None
        # The store acts on the request (the upload exists) but the answer never reaches the client.
        upload = destination.client.create_multipart_upload(Bucket="dst", Key="big")
        created_behind_our_back.append(upload["UploadId"])
        raise botocore.exceptions.ConnectionClosedError(endpoint_url=request.url)

    sent: list[str] = []
    # Both run before moto; the counter first, because the other one raises.
    destination.create_client.meta.events.register_first("before-send.s3.CreateMultipartUpload",
                                                         lambda **_: sent.append("create"))
    destination.create_client.meta.events.register_first("before-send.s3.CreateMultipartUpload",
                                                         lose_first_response)
    calls = calls_of(destination)
    sink = RecordingSink()

    result = migrate(source, destination, SMALL, AbortSignal(), sink)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert sent == ["create", "create"]  # the lost one (never retried by botocore), then ours after reconciling
    assert calls.count("AbortMultipartUpload") == 1  # the upload whose ID we never saw
    assert not open_uploads(destination)
    assert destination.client.get_object(Bucket="dst", Key="big")["Body"].read() == body
    assert len(sink.opened) == 1 and created_behind_our_back[0] not in {u.upload_id for u in sink.opened}
    assert not sink.still_intended and not sink.still_open


def test_the_janitor_aborts_only_uploads_of_ours_on_the_exact_intended_key(moto: None) -> None:
    destination = store("dst", "", "b")
    # An upload initiated long before the intent (moto stamps uploads of an untracked client 2010-11-10).
    other_tool = boto3.client("s3", region_name=REGION)
    old = other_tool.create_multipart_upload(Bucket="dst", Key="moved/k")["UploadId"]
    since = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ours = [destination.create_upload("moved/k", ObjectAttributes()).upload_id for _ in range(2)]
    foreign = destination.create_upload("moved/k2", ObjectAttributes()).upload_id  # another key, same prefix
    intent = UploadIntent("moved/k", since)

    cleanup = close_leftovers(destination, intents=[intent, UploadIntent("moved/none", since)])

    assert cleanup.resolved == (intent, UploadIntent("moved/none", since)) and cleanup.unresolved == ()
    assert sorted(u.upload_id for u in cleanup.aborted) == sorted(ours)
    assert sorted(u["UploadId"] for u in open_uploads(destination)) == sorted([old, foreign])


def test_the_janitor_reports_the_intents_it_could_not_check(moto: None) -> None:
    from tests.unit.test_backend_s3 import fail_first

    destination = store("dst", "", "b", max_attempts=1)
    fail_first(destination, "ListMultipartUploads", 10, 503, "SlowDown")
    intent = UploadIntent("k", dt.datetime.now(dt.UTC))
    cleanup = close_leftovers(destination, intents=[intent])
    assert cleanup.resolved == () and [i for i, _ in cleanup.unresolved] == [intent]
    assert "SlowDown" in cleanup.unresolved[0][1] and "bucket dst" in cleanup.unresolved[0][1]


HEADERS: dict[str, Any] = {
    "ContentType": "text/plain", "ContentLanguage": "fr", "Expires": "Thu, 01 Jan 2099 00:00:00 GMT",
    "CacheControl": "no-cache", "ContentDisposition": "inline", "ContentEncoding": "identity",
    "Metadata": {"owner": "ops"},
}


def test_a_multipart_source_is_copied_in_its_own_layout_and_skipped_on_rerun(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    etag = put_multipart(source, "mp", [os.urandom(6 * MiB), os.urandom(6 * MiB), b"tail"], **HEADERS)

    first = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert first.outcome is Outcome.SUCCEEDED, first.error
    head = destination.client.head_object(Bucket="dst", Key="mp")
    assert head["ETag"].strip('"') == etag  # same part layout: same ETag as the source
    assert head["Metadata"] == {"owner": "ops"}  # no foreign metadata
    assert head["ContentLanguage"] == "fr" and head["CacheControl"] == "no-cache"
    assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    calls = requests_of(source, destination)  # one list: a sum of two would be a snapshot, never filled
    rerun = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert rerun.progress.objects_skipped == 1 and "GetObject" not in calls


def test_a_multipart_source_copied_server_side_is_one_copy_object_and_never_read_through_us(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "a")
    put_multipart(source, "mp", [os.urandom(6 * MiB), os.urandom(6 * MiB), b"tail"], **HEADERS)
    calls = requests_of(source, destination)

    first = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert first.outcome is Outcome.SUCCEEDED, first.error
    # One CopyObject; its answer is an ETag of its own (a whole-object MD5), so each side is HEADed once to check it.
    assert sorted(calls) == sorted(["HeadBucket", "HeadBucket", "ListObjectsV2", "ListObjectsV2", "CopyObject",
                                    "HeadObject", "HeadObject"])
    head = destination.client.head_object(Bucket="dst", Key="mp")
    assert head["Metadata"] == {"owner": "ops"} and head["ContentLanguage"] == "fr"
    assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    calls.clear()
    # A re-run cannot tell the copy's MD5 from the source's composite without reading the source: it copies it
    # again server-side instead, so no byte passes through us either way.
    rerun = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert rerun.outcome is Outcome.SUCCEEDED and rerun.progress.objects_migrated == 1
    assert "GetObject" not in calls and calls.count("CopyObject") == 1


def test_a_single_part_source_copied_as_multipart_is_recognised_by_hashing_in_its_layout(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    body = os.urandom(11 * MiB)
    source.client.put_object(Bucket="src", Key="big", Body=body, Metadata={"a": "1"})
    assert migrate(source, destination, SMALL, AbortSignal(), RecordingSink()).outcome is Outcome.SUCCEEDED
    head = destination.client.head_object(Bucket="dst", Key="big")
    assert head["ETag"].strip('"').endswith("-3") and head["Metadata"] == {"a": "1"}

    rerun = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert rerun.progress.objects_skipped == 1 and rerun.progress.objects_migrated == 0


@pytest.mark.parametrize("remain_source", [True, False], ids=["copy", "move"])
@pytest.mark.parametrize("size", [1000, 11 * MiB], ids=["small", "multipart"])
def test_a_same_size_destination_with_other_bytes_is_not_skipped(moto: None, size: int, remain_source: bool) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    body = os.urandom(size)
    source.client.put_object(Bucket="src", Key="k", Body=body)
    impostor = os.urandom(size)
    if size > 5 * MiB:  # a composite ETag at the destination, an MD5 at the source
        put_multipart(destination, "k", [impostor[:5 * MiB], impostor[5 * MiB:10 * MiB], impostor[10 * MiB:]])
    else:
        destination.client.put_object(Bucket="dst", Key="k", Body=impostor)
    options = MigrationOptions(**{**SMALL.__dict__, "remain_source": remain_source})

    result = migrate(source, destination, options, AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_skipped == 0 and result.progress.objects_migrated == 1
    assert hashlib.md5(destination.client.get_object(Bucket="dst", Key="k")["Body"].read()).digest() == \
        hashlib.md5(body).digest()
    assert (source.stat("k") is None) is not remain_source


def test_a_metadata_only_difference_is_copied_again(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="k", Body=b"same", Metadata={"v": "2"}, ContentLanguage="en")
    destination.client.put_object(Bucket="dst", Key="k", Body=b"same", Metadata={"v": "1"}, ContentLanguage="en")
    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert result.progress.objects_migrated == 1
    assert destination.client.head_object(Bucket="dst", Key="k")["Metadata"] == {"v": "2"}


def test_destination_written_is_reported_from_the_first_write_only(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="k", Body=b"x")
    destination.client.put_object(Bucket="dst", Key="k", Body=b"x")
    skipped = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert skipped.progress.objects_skipped == 1 and not skipped.progress.destination_written
    source.client.put_object(Bucket="src", Key="new", Body=b"y")
    sink = RecordingSink()
    copied = migrate(source, destination, SMALL, AbortSignal(), sink)
    assert copied.progress.destination_written and copied.progress.bytes_skipped == 1
    assert not sink.progress[0].destination_written


def test_the_stall_detector_fails_the_worker_naming_the_endpoint(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="k", Body=b"x")
    interrupted = threading.Event()
    real_list, real_interrupt = source.list_page, source.interrupt

    def hanging_list(prefix: str, token: str | None, start_after: str | None = None) -> Any:
        interrupted.wait(30)  # a request that never gets an answer, until the detector interrupts the store
        return real_list(prefix, token, start_after)

    def interrupt(reason: str) -> None:
        real_interrupt(reason)
        interrupted.set()

    source.list_page = hanging_list  # type: ignore[method-assign]
    source.interrupt = interrupt  # type: ignore[method-assign]
    source.stalled_for = lambda: 0.0 if interrupted.is_set() else 99.0  # type: ignore[method-assign]

    result = migrate(source, destination, MigrationOptions(**{**SMALL.__dict__, "stall_timeout": 1.0}),
                     AbortSignal(), RecordingSink())

    assert interrupted.is_set()
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert "no answer from endpoint AWS S3" in result.error and "bucket src" in result.error
    assert "stallTimeoutSeconds=1" in result.error
