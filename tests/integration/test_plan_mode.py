"""Plan mode against real MinIO: the plan's figures match a count the test makes from the two listings, the plan
writes nothing, and a real run afterwards does exactly what the plan said, with the requests it estimated."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import AbortSignal, Amount, MigrationOptions, NullSink, ObjectFilter, Outcome, migrate
from tests.ground.s3 import S3Server, rclone_check
from tests.unit import requests_of

MiB = 1024 * 1024
PART = 5 * MiB
OPTIONS = MigrationOptions(part_size=PART, multipart_threshold=PART, concurrency=4, part_concurrency=4,
                           progress_interval=0.2, filter=ObjectFilter(exclude=("*.tmp",)))
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload",
          "AbortMultipartUpload", "CopyObject", "DeleteObject", "DeleteObjects"}

BucketFactory = Callable[[S3Server], str]


def store(server: S3Server, bucket: str) -> S3Store:
    return S3Store(S3Config(bucket=bucket, endpoint=server.endpoint, region=server.region,
                            access_key_id=server.access_key, secret_access_key=server.secret_key,
                            addressing_style="path", max_attempts=3))


def put_in_parts(client: Any, bucket: str, key: str, body: bytes) -> None:
    """Write `body` as a multipart upload in PART-sized parts (so its ETag is a composite: "-N")."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), PART), start=1):
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                  Body=body[start:start + PART])["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


def listing(server: S3Server, bucket: str) -> dict[str, tuple[int, str, Any]]:
    """key -> (size, ETag, last modified), as the store lists it."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    objects = [o for page in pages for o in page.get("Contents", [])]
    return {o["Key"]: (o["Size"], o["ETag"].strip('"'), o["LastModified"]) for o in objects}


def fill(source: S3Server, source_bucket: str, destination: S3Server, destination_bucket: str) -> None:
    """New, identical and changed objects, small and multipart-sized, plus objects spec.filter excludes."""
    src, dst = source.client(), destination.client()
    for index in range(5):
        src.put_object(Bucket=source_bucket, Key=f"new/small-{index}.bin", Body=os.urandom(1000 + index))
    src.put_object(Bucket=source_bucket, Key="new/empty", Body=b"")
    src.put_object(Bucket=source_bucket, Key="new/whole-large.bin", Body=os.urandom(11 * MiB + 3))
    put_in_parts(src, source_bucket, "new/parts-large.bin", os.urandom(13 * MiB + 7))
    for index in range(3):
        body = os.urandom(2000 + index)
        src.put_object(Bucket=source_bucket, Key=f"same/small-{index}.bin", Body=body)
        dst.put_object(Bucket=destination_bucket, Key=f"same/small-{index}.bin", Body=body)
    large = os.urandom(12 * MiB + 1)
    put_in_parts(src, source_bucket, "same/parts-large.bin", large)
    put_in_parts(dst, destination_bucket, "same/parts-large.bin", large)
    # Changed: the same size with other bytes, a different size, and a large one whose bytes differ.
    src.put_object(Bucket=source_bucket, Key="changed/same-size.bin", Body=os.urandom(3000))
    dst.put_object(Bucket=destination_bucket, Key="changed/same-size.bin", Body=os.urandom(3000))
    src.put_object(Bucket=source_bucket, Key="changed/resized.bin", Body=os.urandom(4000))
    dst.put_object(Bucket=destination_bucket, Key="changed/resized.bin", Body=os.urandom(10))
    src.put_object(Bucket=source_bucket, Key="changed/large.bin", Body=os.urandom(6 * MiB))
    dst.put_object(Bucket=destination_bucket, Key="changed/large.bin", Body=os.urandom(6 * MiB))
    # Excluded by the filter, wherever they are and whatever the destination holds.
    src.put_object(Bucket=source_bucket, Key="scratch/a.tmp", Body=os.urandom(500))
    src.put_object(Bucket=source_bucket, Key="new/big.tmp", Body=os.urandom(7 * MiB))
    # Only at the destination: a copy leaves it alone.
    dst.put_object(Bucket=destination_bucket, Key="only-here.bin", Body=b"x")


def expected_figures(source: dict[str, tuple[int, str, Any]], destination: dict[str, tuple[int, str, Any]],
                     ) -> tuple[Amount, Amount, Amount]:
    """(copy, identical, excluded), counted from the listings by the test's own rule: excluded ends in .tmp;
    identical has the same size and ETag on both sides (this dataset's ETags are comparable: MD5s, or composites
    of the same part layout); everything else is copied."""
    copy = identical = excluded = Amount()
    for key, (size, etag, _) in source.items():
        if key.endswith(".tmp"):
            excluded = Amount(excluded.objects + 1, excluded.bytes + size)
        elif destination.get(key, (None, None))[:2] == (size, etag):
            identical = Amount(identical.objects + 1, identical.bytes + size)
        else:
            copy = Amount(copy.objects + 1, copy.bytes + size)
    return copy, identical, excluded


@pytest.mark.parametrize("path", ["streamed", "server_side"])
def test_the_plan_says_what_the_run_then_does_and_writes_nothing(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory, path: str,
) -> None:
    # Two servers with different credentials stream the bytes through the worker; one server copies server-side.
    target = cloud_b if path == "streamed" else cloud_a
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(target)
    fill(cloud_a, source_bucket, target, destination_bucket)
    source, destination = store(cloud_a, source_bucket), store(target, destination_bucket)
    before = listing(cloud_a, source_bucket), listing(target, destination_bucket)
    copy, identical, excluded = expected_figures(*before)
    assert (copy.objects, identical.objects, excluded.objects) == (11, 4, 2)  # the dataset is what it says
    sent = requests_of(source, destination)

    planned = migrate(source, destination, dataclasses.replace(OPTIONS, plan=True), AbortSignal(), NullSink())

    assert planned.outcome is Outcome.SUCCEEDED and planned.plan is not None, planned.error
    plan = planned.plan
    assert (plan.copy, plan.identical, plan.excluded) == (copy, identical, excluded)
    assert plan.delete_from_source == Amount()
    # Nothing written: no write request left either client, both buckets list as before, no upload is open.
    assert not WRITES & set(sent), sorted(set(sent))
    assert (listing(cloud_a, source_bucket), listing(target, destination_bucket)) == before
    assert not target.client().list_multipart_uploads(Bucket=destination_bucket).get("Uploads")
    made = Counter(plan.plan_requests["source"]) + Counter(plan.plan_requests["destination"])
    assert Counter(sent) == made
    mechanisms = {name: amount.objects for name, amount in plan.by_mechanism.items()}
    if path == "streamed":
        assert mechanisms == {"single": 8, "multipart": 3}
    else:
        assert mechanisms == {"server_copy": 11}

    sent.clear()
    ran = migrate(source, destination, OPTIONS, AbortSignal(), NullSink())

    assert ran.outcome is Outcome.SUCCEEDED, ran.error
    assert (ran.progress.objects_migrated, ran.progress.bytes_migrated) == (plan.copy.objects, plan.copy.bytes)
    assert (ran.progress.objects_skipped, ran.progress.bytes_skipped) == (plan.identical.objects, plan.identical.bytes)
    assert ran.progress.objects_excluded == plan.excluded.objects
    # The run sent exactly the requests the plan estimated, kind by kind, on each side.
    estimated = Counter(plan.run_requests["source"]) + Counter(plan.run_requests["destination"])
    assert Counter(sent) == estimated
    # rclone, which shares no code with ours, reads both sides: every selected object arrived, byte for byte.
    checked = rclone_check(cloud_a, source_bucket, target, destination_bucket, "--exclude", "*.tmp", "--one-way")
    assert checked.returncode == 0, checked.stderr
    after = listing(target, destination_bucket)
    assert "new/big.tmp" not in after and after["only-here.bin"] == before[1]["only-here.bin"]
    assert {key: after[key] for key in before[1]} == {**before[1], **{key: after[key] for key in before[1]
                                                                        if key.startswith("changed/")}}


def test_a_move_plan_counts_the_source_deletes_and_deletes_nothing(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    fill(cloud_a, source_bucket, cloud_b, destination_bucket)
    source, destination = store(cloud_a, source_bucket), store(cloud_b, destination_bucket)
    before = listing(cloud_a, source_bucket), listing(cloud_b, destination_bucket)
    copy, identical, _ = expected_figures(*before)
    options = dataclasses.replace(OPTIONS, remain_source=False)

    planned = migrate(source, destination, dataclasses.replace(options, plan=True), AbortSignal(), NullSink())

    assert planned.plan is not None
    assert planned.plan.delete_from_source == Amount(copy.objects + identical.objects, copy.bytes + identical.bytes)
    assert planned.plan.run_requests["source"]["DeleteObject"] == copy.objects + identical.objects
    assert (listing(cloud_a, source_bucket), listing(cloud_b, destination_bucket)) == before

    moved = migrate(source, destination, options, AbortSignal(), NullSink())

    assert moved.outcome is Outcome.SUCCEEDED, moved.error
    assert set(listing(cloud_a, source_bucket)) == {"scratch/a.tmp", "new/big.tmp"}  # only the excluded stay
