"""One listing per job and bounded memory: LIST requests per side and worker peak RSS from 1k to 1M keys.

Not a test: it prints figures and asserts nothing. The stores are synthetic (tests/synthetic.py: a source that
synthesizes `k<8 digits>` keys with tiny bodies behind the engine's store seam, and a destination that checks each
write's MD5 and keeps only a counter), so a 1M-key bucket costs no fill time; the engine, the shared listing and the
dispatch window are the real ones. Run from the repository root:

    .venv/bin/python bench/listing_memory.py                        # RSS at 1k..1M, LISTs at parallelism 1, 4, 16
    .venv/bin/python bench/listing_memory.py --keys 1000 10000 --rounds 3

RSS: each run is a fresh `python` child running one worker (parallelism 1, as one pod); its peak RSS is read with
wait4, rounds interleaved, medians printed. LIST counts: the workers of one job as threads of one child sharing an
in-memory ledger (the counts do not depend on whether workers are threads or pods), with the ledger writes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

PAGE = 1000  # keys per LIST page, as S3 and MinIO answer


def child(keys: int, workers: int, concurrency: int) -> dict[str, Any]:
    from datamover.engine import AbortSignal, MemoryLedgerStore, MigrationOptions, NullSink, Outcome, migrate
    from tests.synthetic import SyntheticStore

    source, destination = SyntheticStore("src", "", keys, page_size=PAGE), SyntheticStore("dst", "", 0)
    ledger = MemoryLedgerStore()
    outcomes: list[Any] = [None] * workers

    def run(index: int) -> None:
        options = MigrationOptions(shard_index=index, shard_count=workers, concurrency=concurrency,
                                   progress_interval=5.0)
        outcomes[index] = migrate(source, destination, options, AbortSignal(), NullSink(), ledger)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    assert all(result.outcome is Outcome.SUCCEEDED for result in outcomes), outcomes
    migrated = sum(result.progress.objects_migrated for result in outcomes)
    assert migrated == keys == destination.requests["PutObject"], (migrated, keys)
    return {"keys": keys, "workers": workers, "seconds": seconds,
            "source_lists": source.requests["ListObjectsV2"],
            "destination_lists": destination.requests["ListObjectsV2"],
            "ledger_writes": ledger.swaps,
            "busiest_worker": max(result.progress.objects_migrated for result in outcomes)}


def spawn(keys: int, workers: int, concurrency: int) -> dict[str, Any]:
    process = subprocess.Popen([sys.executable, __file__, "--child", str(keys), str(workers), str(concurrency)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child failed ({keys} keys, {workers} workers): {output[-2000:]}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--list-keys", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="key counts for the LIST-count table")
    parser.add_argument("--rounds", type=int, default=3, help="RSS rounds (1M keys: one round unless --rounds-1m)")
    parser.add_argument("--rounds-1m", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\nWorker peak RSS, one worker (concurrency {args.concurrency}), synthetic stores, medians of interleaved "
          f"rounds:\n")
    print("| keys | rounds | peak RSS MiB (median; min-max) | objects/s (synthetic) | source LISTs | destination LISTs "
          "|")
    print("|---|---|---|---|---|---|")
    samples: dict[int, list[dict[str, Any]]] = {keys: [] for keys in args.keys}
    for round_ in range(max(args.rounds, args.rounds_1m)):
        for keys in args.keys:
            wanted = args.rounds_1m if keys >= 1_000_000 else args.rounds
            if round_ < wanted:
                samples[keys].append(spawn(keys, 1, args.concurrency))
    for keys in args.keys:
        runs = samples[keys]
        rss = [run["peak_rss_mib"] for run in runs]
        rate = statistics.median(run["keys"] / run["seconds"] for run in runs)
        print(f"| {keys:,} | {len(runs)} | {statistics.median(rss):.1f} ({min(rss):.1f}-{max(rss):.1f}) | {rate:,.0f} "
              f"| {runs[0]['source_lists']} | {runs[0]['destination_lists']} |")

    print(f"\nLIST requests per side for the whole job, workers sharing one listing (bound: 1.1 x keys/{PAGE}):\n")
    print("| keys | parallelism | source LISTs | destination LISTs | bound | ledger writes | busiest worker's "
          "objects |")
    print("|---|---|---|---|---|---|---|")
    for keys in args.list_keys:
        for workers in args.parallelism:
            run = spawn(keys, workers, 4)
            bound = 1.1 * keys / PAGE
            print(f"| {keys:,} | {workers} | {run['source_lists']} | {run['destination_lists']} | "
                  f"{bound:g} | {run['ledger_writes']} | {run['busiest_worker']:,} |")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
