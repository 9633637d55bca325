"""Resuming a stopped worker from the listing ledger vs listing and comparing everything again, on 10k keys.

Not a test: it prints figures and asserts nothing. Two real MinIO servers on loopback; the source holds N tiny
objects. Each round: a first worker copies into a fresh destination bucket and is stopped after about half the keys
(at its `before_object` checkpoint, as an abort; a SIGKILL leaves the ledger the same, ranges closed as they end);
then a successor finishes the job either

- resumed: with the first worker's ledger (engine.shards): closed ranges are neither listed nor compared again, or
- re-scan: with a fresh ledger, as if nothing had been recorded: every key is listed and compared again.

Rounds interleave the two; medians are printed of the successor's time and of its requests per side by kind
(counted on the wire, both paths of the S3 backend). Run from the repository root (needs `make binaries` for MinIO):

    .venv/bin/python bench/resume_scan.py                 # 10,000 keys, stopped after 5,000, 3 rounds
    .venv/bin/python bench/resume_scan.py --keys 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from datamover.backends import open_store  # noqa: E402
from datamover.backends.s3 import S3Config, S3Store  # noqa: E402
from datamover.engine import AbortSignal, MigrationOptions, migrate  # noqa: E402
from datamover.engine.shards import MemoryLedgerStore  # noqa: E402
from tests.ground.s3 import S3Server, start_minio  # noqa: E402
from tests.unit import RecordingSink  # noqa: E402


def store(server: S3Server, bucket: str) -> S3Store:
    opened = open_store(S3Config(bucket=bucket, endpoint=server.endpoint, region=server.region,
                                 access_key_id=server.access_key, secret_access_key=server.secret_key,
                                 addressing_style="path"))
    assert isinstance(opened, S3Store)
    return opened


def counted(opened: S3Store, counts: Counter[str]) -> S3Store:
    opened.client.meta.events.register(
        "before-send.s3", lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[1]]))
    return opened


def fill(server: S3Server, bucket: str, keys: int) -> None:
    client = server.client()
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"k{i:08d}", Body=os.urandom(64)), range(keys)))


def one_round(a: S3Server, b: S3Server, source_bucket: str, keys: int, stop_after: int, resumed: bool,
              ) -> dict[str, Any]:
    destination_bucket = f"dst-{secrets.token_hex(6)}"
    b.client().create_bucket(Bucket=destination_bucket)
    options = MigrationOptions(concurrency=16)
    ledger = MemoryLedgerStore()
    first = migrate(store(a, source_bucket), store(b, destination_bucket), options,
                    AbortSignal.at_checkpoint("before_object", stop_after), RecordingSink(), ledger)
    copied_first = first.progress.objects_migrated
    source_counts: Counter[str] = Counter()
    destination_counts: Counter[str] = Counter()
    started = time.monotonic()
    second = migrate(counted(store(a, source_bucket), source_counts),
                     counted(store(b, destination_bucket), destination_counts), options, AbortSignal(),
                     RecordingSink(), ledger if resumed else MemoryLedgerStore())
    seconds = time.monotonic() - started
    assert second.outcome.value == "succeeded", second.error
    return {"seconds": seconds, "first": copied_first, "migrated": second.progress.objects_migrated,
            "skipped": second.progress.objects_skipped, "source": dict(source_counts),
            "destination": dict(destination_counts)}


def median_counts(runs: list[dict[str, Any]], side: str) -> dict[str, float]:
    kinds = sorted({kind for run in runs for kind in run[side]})
    return {kind: statistics.median(run[side].get(kind, 0) for run in runs) for kind in kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--stop-after", type=int, help="objects the first worker starts before it stops (keys/2)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stop_after = args.stop_after or args.keys // 2
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        a = stack.enter_context(start_minio(Path(tmp), "bench-a", "bench-a-admin", secrets.token_hex(16)))
        b = stack.enter_context(start_minio(Path(tmp), "bench-b", "bench-b-admin", secrets.token_hex(16)))
        fill(a, "src", args.keys)
        results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for resumed in (True, False):
                results[resumed].append(one_round(a, b, "src", args.keys, stop_after, resumed))
    print(f"{args.keys} keys of 64 B; the first worker stopped after starting {stop_after}; "
          f"{args.rounds} round(s), medians; load average {os.getloadavg()[0]:.1f}")
    print("| successor | seconds | objects copied / skipped | source requests | destination requests |")
    print("|---|---|---|---|---|")
    for resumed, label in ((True, "resumed from the ledger"), (False, "re-scan (no ledger)")):
        runs = results[resumed]
        requests = {side: ", ".join(f"{kind} {count:g}" for kind, count in median_counts(runs, side).items())
                    for side in ("source", "destination")}
        print(f"| {label} | {statistics.median(r['seconds'] for r in runs):.2f} | "
              f"{statistics.median(r['migrated'] for r in runs):g} / {statistics.median(r['skipped'] for r in runs):g}"
              f" | {requests['source']} | {requests['destination']} |")


if __name__ == "__main__":
    main()
