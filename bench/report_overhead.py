"""What spec.report costs the copy path: the engine over small objects between two local MinIOs, with and without it.

Not a test: it prints figures and asserts nothing about speed. Each round migrates the same source into a fresh
destination bucket twice, once with a ReportWriter (its chunks going to the destination's MinIO, as by default) and
once without, the order alternating between rounds; the figure is the median of migrate()'s wall time per variant,
and, apart, how long close() (the last chunk and the summary, after the copy has ended) took. On a busy host the
spread between runs is wider than the difference, so it also times what an object thread itself does for the
report (ReportWriter.record: build the line, put it on the queue), per call, with the chunks going nowhere.

    .venv/bin/python bench/report_overhead.py                       # 1,000 x 4 KiB, 7 rounds
    .venv/bin/python bench/report_overhead.py --objects 5000 --rounds 9
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from datamover.backends import open_store  # noqa: E402
from datamover.backends.base import ObjectStore  # noqa: E402
from datamover.backends.s3 import S3Config  # noqa: E402
from datamover.engine import AbortSignal, MigrationOptions, NullSink, Outcome, migrate  # noqa: E402
from datamover.engine.report import ReportWriter  # noqa: E402


def _store(server: Any, bucket: str, prefix: str = "") -> ObjectStore:
    return open_store(S3Config(bucket=bucket, prefix=prefix, endpoint=server.endpoint, region=server.region,
                               access_key_id=server.access_key, secret_access_key=server.secret_key,
                               addressing_style="path"))


def _fill(server: Any, bucket: str, count: int, size: int) -> None:
    client = server.client()
    client.create_bucket(Bucket=bucket)
    payload = os.urandom(size)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"small/{i:06d}.bin",
                                                  Body=i.to_bytes(4, "big") + payload[4:]), range(count)))


def _round(a: Any, b: Any, source_bucket: str, with_report: bool, concurrency: int) -> tuple[float, float]:
    bucket = f"dst-{uuid.uuid4().hex[:12]}"
    b.client().create_bucket(Bucket=bucket)
    writer = ReportWriter(_store(b, bucket), "datamover-reports/bench/", 0, "run") if with_report else None
    began = time.monotonic()
    result = migrate(_store(a, source_bucket), _store(b, bucket, "out/"), MigrationOptions(concurrency=concurrency),
                     AbortSignal(), NullSink(), report=writer)
    seconds = time.monotonic() - began
    closing = 0.0
    if writer is not None:
        began = time.monotonic()
        summary = writer.close()
        closing = time.monotonic() - began
        assert summary.lines_written == result.progress.objects_migrated and not summary.lines_dropped
    assert result.outcome is Outcome.SUCCEEDED, result.error
    return seconds, closing


class _Discard:
    """A report store that accepts every chunk at once (the record() timing measures our side only)."""

    def put(self, key: str, body: bytes, attributes: object, content_md5: str) -> str:
        return ""


def _record_cost(calls: int = 100_000) -> float:
    """Seconds an object thread spends in ReportWriter.record, per call (median of 5 batches)."""
    from datamover.backends.base import ObjectSummary
    from datamover.engine.context import ObjectCopy
    from datamover.engine.fsm import ObjectState

    copy = ObjectCopy(ObjectSummary("photos/2024/img_000123.jpg", 52311, '"9b2c6d1f"'), "photos/2024/img_000123.jpg",
                      ObjectState.MIGRATED)
    batches = []
    for _ in range(5):
        writer = ReportWriter(_Discard(), "p/", 0, "run", max_queued=calls + 1)  # type: ignore[arg-type]
        began = time.perf_counter()
        for _ in range(calls):
            writer.record(copy, True, 0.0, 1.0)
        batches.append((time.perf_counter() - began) / calls)
        writer.close()
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    from tests.ground.s3 import start_minio

    with tempfile.TemporaryDirectory(prefix="dm-bench-") as tmp, contextlib.ExitStack() as stack:
        a = stack.enter_context(start_minio(Path(tmp), "bench-a", "bench-a-admin", secrets.token_hex(16)))
        b = stack.enter_context(start_minio(Path(tmp), "bench-b", "bench-b-admin", secrets.token_hex(16)))
        _fill(a, "src", args.objects, args.size)
        _round(a, b, "src", True, args.concurrency)  # warm-up: connection pools, imports
        times: dict[bool, list[float]] = {False: [], True: []}
        closes: list[float] = []
        for index in range(args.rounds):
            for with_report in ((False, True) if index % 2 == 0 else (True, False)):
                seconds, closing = _round(a, b, "src", with_report, args.concurrency)
                times[with_report].append(seconds)
                if with_report:
                    closes.append(closing)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        print(f"{args.objects} objects x {args.size} B, concurrency {args.concurrency}, {args.rounds} rounds")
        print(f"  without report: median {without:.3f}s ({args.objects / without:.0f} objects/s)  "
              f"runs {', '.join(f'{t:.3f}' for t in times[False])}")
        print(f"  with report:    median {with_:.3f}s ({args.objects / with_:.0f} objects/s)  "
              f"runs {', '.join(f'{t:.3f}' for t in times[True])}")
        print(f"  copy-path cost: {100 * (with_ - without) / without:+.1f}% (median vs median); "
              f"close() after the copy: median {statistics.median(closes) * 1000:.0f} ms")
        cost = _record_cost()
        print(f"  ReportWriter.record in the object thread: {cost * 1e6:.1f} us per object "
              f"({100 * cost / (without / args.objects * args.concurrency):.2f}% of one object's copy time here)")


if __name__ == "__main__":
    main()
