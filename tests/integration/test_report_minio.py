"""The per-object report and keysFrom against two real MinIO servers: two workers share a job whose destination
refuses one object (the fault proxy answers its PUTs 503 SlowDown), every report line is checked against the stores
themselves, and a job that takes its keys from that report moves exactly the failed object."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator

from datamover.backends import open_store
from datamover.backends.base import ObjectStore
from datamover.backends.s3 import S3Config
from datamover.engine import (
    AbortSignal,
    MemoryLedgerStore,
    MigrationOptions,
    MigrationResult,
    ObjectFilter,
    migrate,
)
from datamover.engine.keys import KeysFormat, read_keys
from datamover.engine.report import ReportWriter, failed_keys, read_report
from tests.ground.faultproxy import Request, Rule, fault_proxy
from tests.ground.s3 import S3Server
from tests.unit import RecordingSink

BucketFactory = Callable[[S3Server], str]
POISON = "src/sub/poison.bin"
REPORT = "datamover-reports/ns/job/uid-1/"


def open_(server: S3Server, bucket: str, prefix: str = "", endpoint: str | None = None) -> ObjectStore:
    return open_store(S3Config(bucket=bucket, prefix=prefix, endpoint=endpoint or server.endpoint,
                               region=server.region, access_key_id=server.access_key,
                               secret_access_key=server.secret_key, addressing_style="path", max_attempts=2))


def refuse_poison(request: Request) -> bool:
    return request.method == "PUT" and request.path.endswith("/poison.bin")


def run_job(source: ObjectStore, destination: ObjectStore, reports: ObjectStore, options: dict[str, object],
            workers: int = 2, keys: Callable[[], Iterator[str]] | None = None) -> list[MigrationResult]:
    """`workers` workers of one job in threads, sharing one listing ledger, each writing its own report."""
    ledger = MemoryLedgerStore()
    results: list[MigrationResult] = []

    def worker(index: int) -> None:
        writer = ReportWriter(reports, reports.prefix, index, "run1", flush_lines=5, flush_seconds=0.5)
        opts = MigrationOptions(shard_index=index, shard_count=workers, concurrency=4, progress_interval=0.2,
                                **options)  # type: ignore[arg-type]
        results.append(migrate(source, destination, opts, AbortSignal(), RecordingSink(), ledger, writer,
                               keys() if keys else None))
        writer.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def md5(server: S3Server, bucket: str, key: str) -> str | None:
    try:
        return hashlib.md5(server.client().get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
    except server.client().exceptions.NoSuchKey:
        return None


def test_report_lines_match_the_stores_and_name_the_refused_object(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    src_bucket, dst_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    bodies = {f"src/{i:02d}.dat": bytes([i]) * (100 + i) for i in range(30)}
    bodies[POISON] = b"refused by the destination"
    bodies["src/notes.tmp"] = b"excluded by the filter"
    for key, body in bodies.items():
        cloud_a.client().put_object(Bucket=src_bucket, Key=key, Body=body)

    with fault_proxy(cloud_b.endpoint, [Rule("slowdown", match=refuse_poison)]) as proxy:
        destination = open_(cloud_b, dst_bucket, "dst/", endpoint=proxy.endpoint)
        reports = open_(cloud_b, dst_bucket, REPORT)  # the report goes to the destination bucket, directly
        results = run_job(open_(cloud_a, src_bucket, "src/"), destination, reports,
                          {"filter": ObjectFilter(exclude=("*.tmp",))})

    assert sorted(r.outcome.value for r in results) == ["failed", "succeeded"]
    lines = list(read_report(reports, REPORT))
    objects = [line for line in lines if line["record"] == "object"]
    summaries = [line for line in lines if line["record"] == "summary"]
    # Every source key once, across both workers; each worker ends with a complete summary.
    assert sorted(line["key"] for line in objects) == sorted(bodies)
    assert sorted(s["worker"] for s in summaries) == [0, 1] and all(s["complete"] for s in summaries)
    assert sum(s["linesWritten"] for s in summaries) == len(bodies)
    # Each line, checked against the stores (not against the engine's own counters).
    for line in objects:
        key, action = line["key"], line["action"]
        at_destination = md5(cloud_b, dst_bucket, "dst/" + key.removeprefix("src/"))
        source_md5 = hashlib.md5(bodies[key]).hexdigest()
        assert line["size"] == len(bodies[key])
        if action == "copied":
            assert at_destination == source_md5 == line["etag"].strip('"'), key
        else:
            assert at_destination is None, key
    by_key = {line["key"]: line for line in objects}
    assert by_key[POISON]["action"] == "failed" and by_key[POISON]["errorCode"] == "SlowDown"
    assert "poison.bin" in by_key[POISON]["error"]
    assert by_key["src/notes.tmp"]["action"] == "excluded"
    assert failed_keys(lines) == [POISON]
    # The report sits outside the destination prefix: a check of dst/ sees only migrated objects.
    listed = cloud_b.client().list_objects_v2(Bucket=dst_bucket, Prefix="dst/").get("Contents", [])
    assert len(listed) == 30


def test_a_job_with_keys_from_the_report_moves_exactly_the_failed_keys(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    src_bucket, dst_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    bodies = {f"src/{i:02d}.dat": bytes([i]) * 50 for i in range(20)}
    bodies[POISON] = b"refused the first time"
    for key, body in bodies.items():
        cloud_a.client().put_object(Bucket=src_bucket, Key=key, Body=body)
    source, reports = open_(cloud_a, src_bucket, "src/"), open_(cloud_b, dst_bucket, REPORT)
    with fault_proxy(cloud_b.endpoint, [Rule("slowdown", match=refuse_poison)]) as proxy:
        run_job(source, open_(cloud_b, dst_bucket, "dst/", endpoint=proxy.endpoint), reports, {})
    before = {item["Key"]: (item["ETag"], item["LastModified"]) for item in
              cloud_b.client().list_objects_v2(Bucket=dst_bucket, Prefix="dst/")["Contents"]}
    assert len(before) == 20 and "dst/sub/poison.bin" not in before

    # The retry: keys from the first job's report (failed lines only), its own report in another prefix.
    retry_reports = open_(cloud_b, dst_bucket, "datamover-reports/ns/job-retry-1/uid-2/")
    results = run_job(source, open_(cloud_b, dst_bucket, "dst/"), retry_reports, {},
                      keys=lambda: read_keys(reports, KeysFormat.REPORT, ""))

    assert [r.outcome.value for r in results] == ["succeeded", "succeeded"]
    lines = [line for line in read_report(retry_reports, retry_reports.prefix) if line["record"] == "object"]
    assert [(line["key"], line["action"]) for line in lines] == [(POISON, "copied")]
    after = {item["Key"]: (item["ETag"], item["LastModified"]) for item in
             cloud_b.client().list_objects_v2(Bucket=dst_bucket, Prefix="dst/")["Contents"]}
    assert {key: value for key, value in after.items() if key != "dst/sub/poison.bin"} == before  # untouched
    assert md5(cloud_b, dst_bucket, "dst/sub/poison.bin") == hashlib.md5(bodies[POISON]).hexdigest()
    assert sum(r.progress.objects_total for r in results) == 1  # the source was not listed
