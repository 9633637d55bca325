"""Plan mode against moto: the per-object estimate, a plan that writes nothing, and a run that does what it said."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from datamover.backends.base import S3_LIMITS, MiB, ObjectSummary
from datamover.backends.s3 import S3Store
from datamover.engine import Amount, MemoryLedgerStore, MigrationOptions, NullSink, ObjectFilter, Outcome, migrate
from datamover.engine.abort import AbortSignal
from datamover.engine.plan import estimate_copy
from tests.unit import moto_s3, requests_of, store

OPTIONS = MigrationOptions(part_size=5 * MiB, multipart_threshold=5 * MiB, chunk_size=256 * 1024,
                           progress_interval=0, filter=ObjectFilter(exclude=("*.tmp",)))
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload",
          "AbortMultipartUpload", "CopyObject", "DeleteObject", "DeleteObjects"}


def estimate(size: int, etag: str = "d41d8cd98f00b204e9800998ecf8427e", **kwargs: bool) -> tuple[str, dict[str, int],
                                                                                                 dict[str, int]]:
    arguments = {"server_side": False, "source_part_layout": True, "move": False, **kwargs}
    found = estimate_copy(ObjectSummary("k", size, etag), part_size=16 * MiB, multipart_threshold=16 * MiB,
                          limits=S3_LIMITS, **arguments)
    return found.mechanism, dict(found.source), dict(found.destination)


def test_a_small_object_costs_one_get_and_one_put() -> None:
    assert estimate(16 * MiB) == ("single", {"GetObject": 1}, {"PutObject": 1})


def test_a_large_object_is_priced_per_part_with_the_part_size_a_run_would_choose() -> None:
    mechanism, source, destination = estimate(40 * MiB + 1)
    assert mechanism == "multipart"
    assert source == {"HeadObject": 1, "GetObject": 3}
    assert destination == {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1,
                           "ListMultipartUploads": 1, "HeadObject": 1}
    # 1 TiB in 16 MiB parts would need 65,536 parts: the part size grows to fit S3's 10,000.
    _, source, _ = estimate(1024 * 1024 * MiB)
    assert source["GetObject"] == 9987  # 105 MiB parts


def test_a_multipart_source_is_priced_in_its_own_layout() -> None:
    _, source, destination = estimate(40 * MiB, etag="0123456789abcdef0123456789abcdef-8")
    assert source == {"HeadObject": 2, "GetObject": 8} and destination["UploadPart"] == 8


def test_server_side_copies_and_moves() -> None:
    assert estimate(100 * MiB, server_side=True) == ("server_copy", {}, {"CopyObject": 1})
    assert estimate(100 * MiB, "0123456789abcdef0123456789abcdef-7", server_side=True) == (
        "server_copy", {"HeadObject": 1}, {"CopyObject": 1, "HeadObject": 1})
    # The comparison already sent a HEAD to the source: verification asks only the destination.
    assert estimate(100 * MiB, server_side=True, source_stated=True) == ("server_copy", {}, {"CopyObject": 1,
                                                                                          "HeadObject": 1})
    mechanism, _, destination = estimate(6 * 1024 * MiB, server_side=True, move=True)
    assert mechanism == "server_part_copy" and destination["UploadPartCopy"] == 384
    assert estimate(1, move=True)[1] == {"GetObject": 1, "DeleteObject": 1}


@pytest.fixture
def stores() -> Iterator[tuple[S3Store, S3Store]]:
    with moto_s3():
        yield store("src", account="a"), store("dst", account="b")


def put(target: S3Store, key: str, body: bytes) -> None:
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body)


def contents(target: S3Store) -> dict[str, str]:
    pages = target.client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def test_a_plan_writes_nothing_and_a_run_does_what_it_said(stores: tuple[S3Store, S3Store]) -> None:
    source, destination = stores
    same, changed = os.urandom(1000), os.urandom(2000)
    put(source, "new.bin", os.urandom(3000))
    put(source, "big.bin", os.urandom(11 * MiB + 5))
    put(source, "same.bin", same)
    put(destination, "same.bin", same)
    put(source, "changed.bin", changed)
    put(destination, "changed.bin", os.urandom(2000))
    put(source, "scratch.tmp", os.urandom(700))
    before = contents(source), contents(destination)
    sent = requests_of(source, destination)

    result = migrate(source, destination, dataclasses.replace(OPTIONS, plan=True), AbortSignal(), NullSink())

    assert result.outcome is Outcome.SUCCEEDED and result.plan is not None
    assert not WRITES & set(sent), sent
    assert (contents(source), contents(destination)) == before
    assert not destination.client.list_multipart_uploads(Bucket="dst").get("Uploads")
    plan = result.plan
    assert plan.copy == Amount(3, 3000 + 11 * MiB + 5 + 2000)
    assert plan.identical == Amount(1, 1000) and plan.excluded == Amount(1, 700)
    assert plan.delete_from_source == Amount()
    assert plan.by_mechanism == {"single": Amount(2, 5000), "multipart": Amount(1, 11 * MiB + 5)}
    planned = plan.plan_requests["source"]["HeadObject"] + plan.plan_requests["destination"]["HeadObject"]
    assert Counter(sent)["HeadObject"] == planned
    assert result.progress.objects_planned == 4 and result.progress.objects_migrated == 0

    sent.clear()
    run = migrate(source, destination, OPTIONS, AbortSignal(), NullSink())

    assert run.outcome is Outcome.SUCCEEDED
    assert (run.progress.objects_migrated, run.progress.bytes_migrated) == (plan.copy.objects, plan.copy.bytes)
    assert (run.progress.objects_skipped, run.progress.bytes_skipped) == (plan.identical.objects, plan.identical.bytes)
    # Both stores were told apart by request kind; the estimate is the run's own count of every kind.
    estimated = Counter(plan.run_requests["source"]) + Counter(plan.run_requests["destination"])
    assert Counter(sent) == estimated


def test_a_move_plan_counts_source_deletes_and_deletes_nothing(stores: tuple[S3Store, S3Store]) -> None:
    source, destination = stores
    put(source, "a", b"a" * 10)
    put(source, "b", b"b" * 20)
    put(destination, "b", b"b" * 20)
    sent = requests_of(source, destination)

    result = migrate(source, destination, MigrationOptions(remain_source=False, plan=True, progress_interval=0),
                     AbortSignal(), NullSink())

    assert result.plan is not None and not WRITES & set(sent)
    assert result.plan.delete_from_source == Amount(2, 30)
    assert result.plan.run_requests["source"]["DeleteObject"] == 2
    assert set(contents(source)) == {"a", "b"} and set(contents(destination)) == {"b"}


def test_workers_sharing_a_listing_plan_each_page_once_and_a_restarted_one_plans_its_pages_again() -> None:
    with moto_s3():
        source, destination = store("src", account="a", list_page_size=4), store("dst", account="b")
        for index in range(30):
            put(source, f"k/{index:02d}", b"x" * (index + 1))
            if index % 3 == 0:
                put(destination, f"k/{index:02d}", b"x" * (index + 1))
        ledger = MemoryLedgerStore()
        options = [dataclasses.replace(OPTIONS, plan=True, shard_index=index, shard_count=2) for index in (0, 1)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda o: migrate(source, destination, o, AbortSignal(), NullSink(), ledger),
                                    options))
        plans = [result.plan for result in results]
        copy = sum(plan.copy.objects for plan in plans if plan)
        identical = sum(plan.identical.objects for plan in plans if plan)
        assert None not in plans and (copy, identical) == (20, 10)
        # Worker 0 restarted (its report lost with its pod): it plans every page it had claimed again.
        again = migrate(source, destination, options[0], AbortSignal(), NullSink(), ledger)
        assert again.plan is not None and plans[0] is not None
        assert (again.plan.copy, again.plan.identical) == (plans[0].copy, plans[0].identical)
