"""The engine asks a store what it can do (moto): part limits declared as data, part layout only where declared."""

from __future__ import annotations

import os
from dataclasses import replace

from datamover.backends.base import S3_LIMITS, Capabilities, MiB
from datamover.engine import AbortSignal, Outcome, migrate
from tests.unit import RecordingSink, moto_s3, open_uploads, store
from tests.unit.test_engine_intents import SMALL, put_multipart


@moto_s3()
def test_parts_are_fitted_to_the_part_count_the_destination_declares() -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    destination.capabilities = Capabilities(limits=replace(S3_LIMITS, max_parts=2), part_layout=True)
    body = os.urandom(11 * MiB)  # three parts of 5 MiB under S3's own limits
    source.client.put_object(Bucket="src", Key="big", Body=body)

    result = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    head = destination.client.head_object(Bucket="dst", Key="big")
    assert head["ETag"].strip('"').endswith("-2"), "the part size did not grow to fit the declared part count"
    assert destination.client.get_object(Bucket="dst", Key="big")["Body"].read() == body


@moto_s3()
def test_a_source_that_cannot_tell_its_layout_is_copied_in_ours_and_still_recognised() -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.capabilities = Capabilities(part_layout=False)
    parts = [os.urandom(6 * MiB), os.urandom(6 * MiB), b"tail"]
    source_etag = put_multipart(source, "mp", parts)

    first = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())

    assert first.outcome is Outcome.SUCCEEDED, first.error
    copied = destination.client.head_object(Bucket="dst", Key="mp")["ETag"].strip('"')
    assert copied != source_etag and copied.endswith("-3"), "the source's layout was used without being declared"
    assert destination.client.get_object(Bucket="dst", Key="mp")["Body"].read() == b"".join(parts)
    rerun = migrate(source, destination, SMALL, AbortSignal(), RecordingSink())
    assert rerun.progress.objects_skipped == 1, "a copy in the destination's own layout must be recognised"
    assert open_uploads(destination) == []
