"""Azure to Azure: server-side copy (Copy Blob From URL, Put Block From URL) against streaming through the engine.

Not a test: it prints figures and asserts nothing about speed. Run from the repository root after `make binaries`:

    .venv/bin/python bench/azure_server_copy.py              # 3 interleaved runs of each, medians
    .venv/bin/python bench/azure_server_copy.py --runs 5 --big 8 --big-mib 32

Both runs copy the same container into a fresh one on one Azurite (loopback) with the same options; "streaming" is
the same backend with its server-side copy hidden, so the engine reads and writes every byte itself. On Azurite the
service's own copy runs on the same machine, so the ratio says what the worker saves (its bytes and CPU), not what a
real region-to-region copy would take.
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

from datamover.backends.azure_blob import AzureBlobConfig, AzureBlobStore  # noqa: E402
from datamover.backends.base import ObjectStore  # noqa: E402
from datamover.engine import AbortSignal, MigrationOptions, Outcome, migrate  # noqa: E402
from tests.ground.clouds import AzuriteServer, start_azurite  # noqa: E402
from tests.unit import RecordingSink  # noqa: E402

MiB = 1024 * 1024


class StreamingOnly(AzureBlobStore):
    """The same backend without its server-side copy: the engine streams every byte."""

    def can_copy_from(self, source: ObjectStore) -> bool:
        return False


def config(server: AzuriteServer, container: str) -> AzureBlobConfig:
    return AzureBlobConfig(container=container, account_url=server.endpoint, account_name=server.account,
                           account_key=server.key)


def run(server: AzuriteServer, source: str, streaming: bool, options: MigrationOptions) -> float:
    destination_container = f"b-{uuid.uuid4().hex[:12]}"
    server.client().create_container(destination_container)
    destination_type = StreamingOnly if streaming else AzureBlobStore
    start = time.monotonic()
    result = migrate(AzureBlobStore(config(server, source)), destination_type(config(server, destination_container)),
                     options, AbortSignal(), RecordingSink())
    seconds = time.monotonic() - start
    if result.outcome is not Outcome.SUCCEEDED:
        raise SystemExit(f"run failed: {result.error}")
    server.client().delete_container(destination_container)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=4, help="objects copied in parts")
    parser.add_argument("--big-mib", type=int, default=24)
    parser.add_argument("--small", type=int, default=40, help="objects copied whole (64 KiB)")
    args = parser.parse_args()
    options = MigrationOptions(part_size=8 * MiB, multipart_threshold=8 * MiB, concurrency=4, part_concurrency=4)
    with tempfile.TemporaryDirectory() as tmp, start_azurite(Path(tmp)) as server:
        source = f"a-{uuid.uuid4().hex[:12]}"
        container = server.client().create_container(source)
        total = 0
        for index in range(args.big):
            body = os.urandom(args.big_mib * MiB)
            container.upload_blob(f"big-{index}", body)
            total += len(body)
        for index in range(args.small):
            body = os.urandom(64 * 1024)
            container.upload_blob(f"small-{index}", body)
            total += len(body)
        times: dict[str, list[float]] = {"server-side": [], "streaming": []}
        for _ in range(args.runs):  # interleaved, so drift in the machine's load hits both alike
            times["server-side"].append(run(server, source, streaming=False, options=options))
            times["streaming"].append(run(server, source, streaming=True, options=options))
    print(f"azure->azure on Azurite: {args.big} x {args.big_mib} MiB + {args.small} x 64 KiB "
          f"({total / MiB:.0f} MiB), {args.runs} interleaved runs, medians")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds:7.2f} s  {total / MiB / seconds:7.1f} MiB/s  runs: "
              + " ".join(f"{t:.2f}" for t in times[name]))
    print(f"  streaming / server-side time ratio: {medians['streaming'] / medians['server-side']:.2f}")


if __name__ == "__main__":
    main()
