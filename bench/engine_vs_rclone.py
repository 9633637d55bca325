"""Engine throughput against `rclone copy` between two local MinIO servers, our peak RSS, and abort latency.

Not a test: it prints figures and asserts nothing about speed. Run from the repository root after `make ground`:

    .venv/bin/python bench/engine_vs_rclone.py            # 3 runs of each, medians
    .venv/bin/python bench/engine_vs_rclone.py --runs 5 --small-count 500

Each of our runs is a fresh `python` child process (so its peak RSS is ours alone, read with wait4); its time is the
migrate() call measured inside the child, which leaves out interpreter start-up (~0.3 s) that rclone (a Go binary)
barely has. rclone's time is its whole process. Both copy into a fresh destination bucket with matched concurrency.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024


@dataclass(frozen=True)
class Workload:
    name: str
    bucket: str
    objects: int
    total_bytes: int
    # Matched concurrency: ours (objects in flight, parts in flight per worker) vs rclone flags.
    concurrency: int
    part_concurrency: int
    rclone_flags: tuple[str, ...]
    unit: str  # "objects/s" or "MB/s"

    def rate(self, seconds: float) -> float:
        return self.objects / seconds if self.unit == "objects/s" else self.total_bytes / 1e6 / seconds


def _env_for(prefix: str, server: object, bucket: str) -> dict[str, str]:
    return {
        f"DM_{prefix}_ENDPOINT": server.endpoint,  # type: ignore[attr-defined]
        f"DM_{prefix}_KEY": server.access_key,  # type: ignore[attr-defined]
        f"DM_{prefix}_SECRET": server.secret_key,  # type: ignore[attr-defined]
        f"DM_{prefix}_BUCKET": bucket,
    }


def _peak_rss_mib(pid: int) -> int:
    """VmHWM of a running process. (wait4's ru_maxrss would be wrong here: Linux keeps it across fork+exec, so a
    child would report this script's own peak, which holds the test data.)"""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def _run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run a child; returns (wall seconds, peak RSS in MiB sampled every 20 ms, stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _peak_rss_mib(child.pid))
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({child.returncode}): {err.read()[-2000:]}")
        return elapsed, peak, out.read()


def _ours(workload: Workload, src: object, dst: object, dst_bucket: str) -> tuple[float, int]:
    env = {**os.environ, **_env_for("SRC", src, workload.bucket), **_env_for("DST", dst, dst_bucket)}
    argv = [sys.executable, __file__, "--child", "--concurrency", str(workload.concurrency),
            "--part-concurrency", str(workload.part_concurrency)]
    _, rss, out = _run_measured(argv, env)
    report = json.loads(out.strip().splitlines()[-1])
    if report["outcome"] != "succeeded" or report["migrated"] != workload.objects:
        raise RuntimeError(f"our run did not copy everything: {report}")
    return float(report["seconds"]), rss


def _rclone(workload: Workload, src: object, dst: object, dst_bucket: str) -> tuple[float, int]:
    from tests.ground.binaries import binary

    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update(src.rclone_env("src"))  # type: ignore[attr-defined]
    env.update(dst.rclone_env("dst"))  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="rclone-") as tmp:
        config = Path(tmp) / "rclone.conf"
        config.write_text("")
        argv = [str(binary("rclone")), "copy", f"src:{workload.bucket}", f"dst:{dst_bucket}", f"--config={config}",
                f"--cache-dir={Path(tmp) / 'cache'}", *workload.rclone_flags]
        seconds, rss, _ = _run_measured(argv, env)
    return seconds, rss


def _fill(
    server: object, workload_small: Workload, workload_big: Workload, abort_bucket: str, abort_bytes: int,
) -> None:
    client = server.client()  # type: ignore[attr-defined]
    for bucket in (workload_small.bucket, workload_big.bucket, abort_bucket):
        client.create_bucket(Bucket=bucket)
    small = os.urandom(4096)

    def put_small(index: int) -> None:
        body = index.to_bytes(4, "big") + small[4:]
        client.put_object(Bucket=workload_small.bucket, Key=f"small/{index:05d}.bin", Body=body)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put_small, range(workload_small.objects)))
    big = bytearray(os.urandom(workload_big.total_bytes // workload_big.objects))
    for index in range(workload_big.objects):
        big[:8] = index.to_bytes(8, "big")
        client.upload_fileobj(io.BytesIO(big), workload_big.bucket, f"big/{index}.bin")
    client.upload_fileobj(io.BytesIO(os.urandom(abort_bytes)), abort_bucket, "one-gib.bin")


def _empty(server: object, bucket: str) -> None:
    from tests.ground.s3 import empty_and_delete_bucket

    empty_and_delete_bucket(server, bucket)  # type: ignore[arg-type]


def _abort_latency(src: object, dst: object, bucket: str, runs: int) -> list[tuple[float, float]]:
    """(seconds from abort request to migrate() returning, seconds to the last chunk read) per run."""
    from datamover.backends import open_store
    from datamover.backends.s3 import S3Config
    from datamover.engine import AbortSignal, MigrationOptions, NullSink, Outcome, migrate

    def config(server: object, name: str) -> S3Config:
        return S3Config(bucket=name, endpoint=server.endpoint, region="us-east-1",  # type: ignore[attr-defined]
                        access_key_id=server.access_key, secret_access_key=server.secret_key,  # type: ignore[attr-defined]
                        addressing_style="path")

    def one_run(dst_bucket: str) -> tuple[float, float]:
        downloading = threading.Event()
        chunks = 0
        last_chunk = 0.0

        def hook(name: str, key: str | None) -> None:
            nonlocal chunks, last_chunk
            if name == "between_chunks":
                chunks += 1
                last_chunk = time.monotonic()
                if chunks >= 96:  # well into the download (parts of 16 MiB, 1 MiB chunks)
                    downloading.set()

        abort = AbortSignal(on_checkpoint=hook)
        outcome: list[object] = []

        def run_migration() -> None:
            outcome.append(migrate(open_store(config(src, bucket)), open_store(config(dst, dst_bucket)),
                                   MigrationOptions(concurrency=1, part_concurrency=4), abort, NullSink()))

        worker = threading.Thread(target=run_migration)
        worker.start()
        downloading.wait(120)
        requested = time.monotonic()
        abort.request("bench")
        worker.join()
        stopped = time.monotonic()
        result = outcome[0]
        assert result.outcome is Outcome.ABORTED, result  # type: ignore[attr-defined]
        left = dst.client().list_multipart_uploads(Bucket=dst_bucket).get("Uploads", [])  # type: ignore[attr-defined]
        assert not left, f"uploads left open: {left}"
        return stopped - requested, max(0.0, last_chunk - requested)

    results = []
    for run in range(runs):
        dst_bucket = f"abort-dst-{run}"
        dst.client().create_bucket(Bucket=dst_bucket)  # type: ignore[attr-defined]
        results.append(one_run(dst_bucket))
        _empty(dst, dst_bucket)
    return results


def _child(args: argparse.Namespace) -> None:
    """One measured migration, configured from DM_* environment variables (credentials never on argv)."""
    from datamover.backends import open_store
    from datamover.backends.s3 import S3Config
    from datamover.engine import AbortSignal, MigrationOptions, NullSink, migrate

    def config(side: str) -> S3Config:
        return S3Config(bucket=os.environ[f"DM_{side}_BUCKET"], endpoint=os.environ[f"DM_{side}_ENDPOINT"],
                        region="us-east-1", access_key_id=os.environ[f"DM_{side}_KEY"],
                        secret_access_key=os.environ[f"DM_{side}_SECRET"], addressing_style="path",
                        max_pool_connections=max(32, args.concurrency + args.part_concurrency + 4))

    options = MigrationOptions(concurrency=args.concurrency, part_concurrency=args.part_concurrency,
                               part_size=16 * MiB, multipart_threshold=16 * MiB)
    source, destination = open_store(config("SRC")), open_store(config("DST"))
    began = time.monotonic()
    result = migrate(source, destination, options, AbortSignal(), NullSink())
    seconds = time.monotonic() - began
    print(json.dumps({"seconds": seconds, "outcome": result.outcome.value,
                      "migrated": result.progress.objects_migrated, "error": result.error}))


@contextlib.contextmanager
def _servers() -> Iterator[tuple[object, object]]:
    import secrets

    from tests.ground.s3 import start_minio

    with tempfile.TemporaryDirectory(prefix="dm-bench-") as tmp, contextlib.ExitStack() as stack:
        a = stack.enter_context(start_minio(Path(tmp), "bench-a", "bench-a-admin", secrets.token_hex(16)))
        b = stack.enter_context(start_minio(Path(tmp), "bench-b", "bench-b-admin", secrets.token_hex(16)))
        yield a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--big-count", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=128)
    parser.add_argument("--abort-mib", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--part-concurrency", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    small = Workload(
        f"{args.small_count} x 4 KiB", "src-small", args.small_count, args.small_count * 4096,
        concurrency=args.concurrency, part_concurrency=4,
        rclone_flags=(f"--transfers={args.concurrency}", f"--checkers={args.concurrency}"), unit="objects/s",
    )
    big_parts_per_file = max(1, args.part_concurrency // args.big_count)
    big = Workload(
        f"{args.big_count} x {args.big_mib} MiB", "src-big", args.big_count, args.big_count * args.big_mib * MiB,
        concurrency=args.big_count, part_concurrency=args.part_concurrency,
        rclone_flags=(f"--transfers={args.big_count}", f"--checkers={args.big_count}", "--s3-chunk-size=16M",
                      "--s3-upload-cutoff=16M", f"--s3-upload-concurrency={big_parts_per_file}"),
        unit="MB/s",
    )
    with _servers() as (a, b):
        print(f"filling cloud A ({args.small_count} small, {args.big_count} x {args.big_mib} MiB, "
              f"{args.abort_mib} MiB) ...", flush=True)
        _fill(a, small, big, "src-abort", args.abort_mib * MiB)
        rows = []
        for workload in (small, big):
            samples: dict[str, list[float]] = {"datamover": [], "rclone": []}
            rss: dict[str, list[int]] = {"datamover": [], "rclone": []}
            for run in range(args.runs):
                # Alternate who goes first so page-cache warmth does not favour one tool.
                order = ("datamover", "rclone") if run % 2 == 0 else ("rclone", "datamover")
                for tool in order:
                    bucket = f"dst-{hashlib.md5(f'{workload.name}{tool}{run}'.encode()).hexdigest()[:12]}"
                    b.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
                    copy = _ours if tool == "datamover" else _rclone
                    seconds, peak = copy(workload, a, b, bucket)
                    samples[tool].append(workload.rate(seconds))
                    rss[tool].append(peak)
                    _empty(b, bucket)
                    print(f"  {workload.name:>14} run {run + 1} {tool:<9} {workload.rate(seconds):9.1f} "
                          f"{workload.unit}  peak RSS {peak} MiB", flush=True)
            rows.append((workload, samples, rss))
        latencies = _abort_latency(a, b, "src-abort", args.runs)

    print()
    print(f"{'workload':<16} {'tool':<10} {'runs':<28} {'median':>10} {'unit':<10} {'vs rclone':>9} {'peak RSS':>9}")
    for workload, samples, rss in rows:
        reference = statistics.median(samples["rclone"])
        for tool in ("datamover", "rclone"):
            median = statistics.median(samples[tool])
            runs = ", ".join(f"{value:.1f}" for value in samples[tool])
            print(f"{workload.name:<16} {tool:<10} {runs:<28} {median:>10.1f} {workload.unit:<10} "
                  f"{median / reference:>8.2f}x {max(rss[tool]):>6} MiB")
    stop = [latency for latency, _ in latencies]
    chunk = [last for _, last in latencies]
    print()
    print(f"abort latency, {args.abort_mib} MiB object mid-download (request -> migrate() returned, uploads aborted): "
          f"median {statistics.median(stop) * 1000:.0f} ms, max {max(stop) * 1000:.0f} ms "
          f"(runs: {', '.join(f'{s * 1000:.0f}' for s in stop)} ms); last chunk read "
          f"{max(chunk) * 1000:.0f} ms after the request at most")


if __name__ == "__main__":
    main()
