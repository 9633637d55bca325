"""GCS to GCS: server-side copy (rewrite) against streaming through the engine, on fake-gcs-server.

Not a test: it prints figures and asserts nothing about speed. Run from the repository root after `make binaries`:

    .venv/bin/python bench/gcs_server_copy.py              # 3 interleaved runs of each, medians
    .venv/bin/python bench/gcs_server_copy.py --runs 5 --big 8 --big-mib 32

Both runs copy the same bucket into a fresh one on one fake-gcs-server (loopback, memory backend) with the same
options; "streaming" is the same backend with its server-side copy hidden, so the engine reads and writes every byte
itself (objects above the threshold in parts, composed). The emulator copies in its own memory on the same machine
and finishes every rewrite in one call, so the ratio says what the worker saves (its bytes, requests and CPU), not
what a real copy between GCS buckets would take (there, large rewrites take several calls and cross-location or
cross-class ones are paced by the service).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamover.backends.base import ObjectStore  # noqa: E402
from datamover.backends.gcs import GcsConfig, GcsStore  # noqa: E402
from datamover.engine import AbortSignal, MigrationOptions, Outcome, migrate  # noqa: E402
from tests.ground.clouds import FakeGcsServer, start_fake_gcs  # noqa: E402
from tests.unit import RecordingSink  # noqa: E402

MiB = 1024 * 1024


class StreamingOnly(GcsStore):
    """The same backend without its server-side copy: the engine streams every byte."""

    def can_copy_from(self, source: ObjectStore) -> bool:
        return False


def config(server: FakeGcsServer, bucket: str) -> GcsConfig:
    return GcsConfig(bucket=bucket, endpoint=server.endpoint, project=server.project, anonymous=True)


def run(server: FakeGcsServer, source: str, streaming: bool, options: MigrationOptions) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) of one migration into a fresh bucket."""
    destination = server.client().create_bucket(f"b-{uuid.uuid4().hex[:12]}")
    destination_type = StreamingOnly if streaming else GcsStore
    start, cpu = time.monotonic(), time.process_time()
    result = migrate(GcsStore(config(server, source)), destination_type(config(server, destination.name)),
                     options, AbortSignal(), RecordingSink())
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu
    if result.outcome is not Outcome.SUCCEEDED:
        raise SystemExit(f"run failed: {result.error}")
    destination.delete(force=True)
    return seconds, cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=4, help="objects above the multipart threshold")
    parser.add_argument("--big-mib", type=int, default=24)
    parser.add_argument("--small", type=int, default=40, help="objects copied whole (64 KiB)")
    args = parser.parse_args()
    options = MigrationOptions(part_size=8 * MiB, multipart_threshold=8 * MiB, concurrency=4, part_concurrency=4)
    with tempfile.TemporaryDirectory() as tmp, start_fake_gcs(Path(tmp)) as server:
        source = server.client().create_bucket(f"a-{uuid.uuid4().hex[:12]}")
        total = 0
        for index in range(args.big):
            body = os.urandom(args.big_mib * MiB)
            source.blob(f"big-{index}").upload_from_string(body)
            total += len(body)
        for index in range(args.small):
            body = os.urandom(64 * 1024)
            source.blob(f"small-{index}").upload_from_string(body)
            total += len(body)
        times: dict[str, list[tuple[float, float]]] = {"server-side": [], "streaming": []}
        for _ in range(args.runs):  # interleaved, so drift in the machine's load hits both alike
            times["server-side"].append(run(server, source.name, streaming=False, options=options))
            times["streaming"].append(run(server, source.name, streaming=True, options=options))
    print(f"gcs->gcs on fake-gcs-server: {args.big} x {args.big_mib} MiB + {args.small} x 64 KiB "
          f"({total / MiB:.0f} MiB), {args.runs} interleaved runs, medians")
    medians = {name: statistics.median(wall for wall, _ in values) for name, values in times.items()}
    for name, seconds in medians.items():
        cpu = statistics.median(cpu for _, cpu in times[name])
        print(f"  {name:12s} {seconds:7.2f} s  {total / MiB / seconds:7.1f} MiB/s  worker CPU {cpu:6.2f} s  runs: "
              + " ".join(f"{wall:.2f}" for wall, _ in times[name]))
    print(f"  streaming / server-side time ratio: {medians['streaming'] / medians['server-side']:.2f}")


if __name__ == "__main__":
    main()
