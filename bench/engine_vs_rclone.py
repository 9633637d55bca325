"""The data plane against its peers: datamover, rclone, s5cmd and a raw GET→PUT pipe between two local MinIO servers.

Not a test: it prints figures and asserts nothing about speed. Run from the repository root after `make binaries`
(rclone and s5cmd are pinned in tools/ and built by tools/build.sh):

    .venv/bin/python bench/engine_vs_rclone.py --quick        # a few minutes: small workloads, 3 rounds
    .venv/bin/python bench/engine_vs_rclone.py                # 1k and 10k x 4 KiB, 4 x 256 MiB, server-side copy
    .venv/bin/python bench/engine_vs_rclone.py --write-doc    # ... and rewrite the table in docs/performance.md
    .venv/bin/python bench/engine_vs_rclone.py --sweep        # ... and datamover at other concurrencies

Every tool is a fresh process per run, as a user would start it, and its time is the whole process (our interpreter
start-up included). Runs are interleaved: each round runs every tool once, in an order rotated per round, into a fresh
destination bucket; figures are medians over rounds. Per tool: rate, CPU (user + system of the process tree) per
object, peak RSS (VmHWM, sampled), and requests per object by kind as both MinIO servers count them (their Prometheus
metrics, opened to the bench only), and the two servers' own CPU per object (both MinIO processes: on one machine they
share its CPUs with the client, so their cost bounds what any client can reach, printed as a ceiling). s5cmd cannot
copy between two endpoints: its figure is download to a local directory, then upload (two processes, times added).
`pipe` is the least a Python copier can do: list, then GET and PUT each object on urllib3 with botocore's signer (no
verification, no state), and for large objects ranged GETs into UploadPart. The server-side workload copies within one
server (datamover's CopyObject path, rclone's and s5cmd's server-side copy) and is compared with streaming the same
objects between the two servers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import resource
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))

MiB = 1024 * 1024
REGION = "us-east-1"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- BEGIN bench-table -->", "<!-- END bench-table -->"
# Metrics v3: counted as requests end (v2's node metrics are cached for about 10 s, so a run would be charged with the
# previous run's bucket clean-up and miss its own last requests).
METRICS = "/minio/metrics/v3/api/requests"
_REQUESTS = re.compile(r'^minio_api_requests_total\{name="([^"]+)"[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class Workload:
    name: str
    bucket: str
    objects: int
    object_size: int
    server_side: bool = False  # copy within cloud A instead of from A to B

    @property
    def small(self) -> bool:
        return self.object_size < 16 * MiB

    @property
    def unit(self) -> str:
        return "objects/s" if self.small else "MB/s"

    def rate(self, seconds: float) -> float:
        return self.objects / seconds if self.small else self.objects * self.object_size / 1e6 / seconds


@dataclass
class Sample:
    rate: float
    cpu_ms_per_object: float
    rss_mib: int
    requests: dict[str, float]
    engine_seconds: float | None = None
    server_cpu_ms_per_object: float = 0.0


@dataclass
class Row:
    workload: Workload
    tool: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, pick: Callable[[Sample], float]) -> float:
        return statistics.median(pick(sample) for sample in self.samples)


# -- the measured processes ------------------------------------------------------------------------------------------


def _peak_rss_mib(pid: int) -> int:
    """VmHWM of a running process (wait4's ru_maxrss would be wrong: Linux keeps it across fork+exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run a child to its end: (wall seconds, CPU seconds of it and its children, peak RSS MiB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _peak_rss_mib(child.pid))
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed ({child.returncode}): {err.read()[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return elapsed, cpu, peak, out.read()


def _side_env(prefix: str, server: Any, bucket: str) -> dict[str, str]:
    return {f"DM_{prefix}_ENDPOINT": server.endpoint, f"DM_{prefix}_KEY": server.access_key,
            f"DM_{prefix}_SECRET": server.secret_key, f"DM_{prefix}_BUCKET": bucket}


def _datamover(concurrency: int | None, part_concurrency: int | None) -> Callable[..., tuple[float, float, int, float]]:
    def run(workload: Workload, src: Any, dst: Any, dst_bucket: str) -> tuple[float, float, int, float]:
        env = {**os.environ, **_side_env("SRC", src, workload.bucket), **_side_env("DST", dst, dst_bucket)}
        argv = [sys.executable, __file__, "--child", "datamover"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        if part_concurrency:
            argv += ["--part-concurrency", str(part_concurrency)]
        seconds, cpu, rss, out = _run(argv, env)
        report = json.loads(out.strip().splitlines()[-1])
        if report["outcome"] != "succeeded" or report["migrated"] != workload.objects:
            raise RuntimeError(f"datamover did not copy everything: {report}")
        return seconds, cpu, rss, float(report["seconds"])

    return run


def _pipe(workload: Workload, src: Any, dst: Any, dst_bucket: str) -> tuple[float, float, int, float]:
    env = {**os.environ, **_side_env("SRC", src, workload.bucket), **_side_env("DST", dst, dst_bucket)}
    seconds, cpu, rss, _ = _run([sys.executable, __file__, "--child", "pipe"], env)
    return seconds, cpu, rss, 0.0


def _rclone(flags: Callable[[Workload], list[str]]) -> Callable[..., tuple[float, float, int, float]]:
    def run(workload: Workload, src: Any, dst: Any, dst_bucket: str) -> tuple[float, float, int, float]:
        from tests.ground.binaries import binary

        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        env.update(src.rclone_env("src"))
        env.update(dst.rclone_env("dst"))
        # The same remote on both sides is what makes rclone copy server-side.
        target = f"src:{dst_bucket}" if workload.server_side else f"dst:{dst_bucket}"
        with tempfile.TemporaryDirectory(prefix="rclone-") as tmp:
            config = Path(tmp) / "rclone.conf"
            config.write_text("")
            argv = [str(binary("rclone")), "copy", f"src:{workload.bucket}", target, f"--config={config}",
                    f"--cache-dir={Path(tmp) / 'cache'}", *flags(workload)]
            seconds, cpu, rss, _ = _run(argv, env)
        return seconds, cpu, rss, 0.0

    return run


def _s5cmd(workload: Workload, src: Any, dst: Any, dst_bucket: str) -> tuple[float, float, int, float]:
    from tests.ground.binaries import binary

    def env_for(server: Any) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
                "AWS_REGION": REGION}

    s5cmd = str(binary("s5cmd"))
    if workload.server_side:
        argv = [s5cmd, "--endpoint-url", src.endpoint, "cp", f"s3://{workload.bucket}/*", f"s3://{dst_bucket}/"]
        seconds, cpu, rss, _ = _run(argv, env_for(src))
        return seconds, cpu, rss, 0.0
    with tempfile.TemporaryDirectory(prefix="s5cmd-", dir=os.environ.get("DM_BENCH_TMP")) as tmp:
        down = _run([s5cmd, "--endpoint-url", src.endpoint, "cp", f"s3://{workload.bucket}/*", f"{tmp}/"],
                    env_for(src))
        up = _run([s5cmd, "--endpoint-url", dst.endpoint, "cp", f"{tmp}/", f"s3://{dst_bucket}/"], env_for(dst))
    return down[0] + up[0], down[1] + up[1], max(down[2], up[2]), 0.0


# -- children ----------------------------------------------------------------------------------------------------


def _child_datamover(args: argparse.Namespace) -> None:
    from datamover.backends import open_store
    from datamover.backends.s3 import S3Config
    from datamover.engine import AbortSignal, MigrationOptions, NullSink, migrate

    defaults = MigrationOptions()
    options = MigrationOptions(concurrency=args.concurrency or defaults.concurrency,
                               part_concurrency=args.part_concurrency or defaults.part_concurrency)
    # The worker's pool size (worker/main.py): one connection per object and per part in flight.
    pool = max(32, options.concurrency * (options.part_concurrency + 1))

    def config(side: str) -> S3Config:
        return S3Config(bucket=os.environ[f"DM_{side}_BUCKET"], endpoint=os.environ[f"DM_{side}_ENDPOINT"],
                        region=REGION, access_key_id=os.environ[f"DM_{side}_KEY"],
                        secret_access_key=os.environ[f"DM_{side}_SECRET"], addressing_style="path",
                        max_pool_connections=pool)

    began = time.monotonic()
    result = migrate(open_store(config("SRC")), open_store(config("DST")), options, AbortSignal(), NullSink())
    print(json.dumps({"seconds": time.monotonic() - began, "outcome": result.outcome.value,
                      "migrated": result.progress.objects_migrated, "error": result.error}))


def _child_pipe(args: argparse.Namespace) -> None:
    import base64
    import hashlib

    import boto3
    import botocore.config
    from hot_path import _urllib3_copier

    from datamover.engine import MigrationOptions  # the pipe runs as many objects at once as datamover does

    def client(side: str) -> Any:
        config = botocore.config.Config(region_name=REGION, max_pool_connections=64, s3={"addressing_style": "path"},
                                        request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required")
        return boto3.session.Session().client(
            "s3", endpoint_url=os.environ[f"DM_{side}_ENDPOINT"], aws_access_key_id=os.environ[f"DM_{side}_KEY"],
            aws_secret_access_key=os.environ[f"DM_{side}_SECRET"], config=config)

    source, destination = client("SRC"), client("DST")
    src_bucket, dst_bucket = os.environ["DM_SRC_BUCKET"], os.environ["DM_DST_BUCKET"]
    listed = [item for page in source.get_paginator("list_objects_v2").paginate(Bucket=src_bucket)
              for item in page.get("Contents", [])]
    if all(item["Size"] < 16 * MiB for item in listed):
        copy = _urllib3_copier()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency or MigrationOptions().concurrency) as pool:
            list(pool.map(copy, [item["Key"] for item in listed]))
        return
    part = 16 * MiB
    uploads = {item["Key"]: destination.create_multipart_upload(Bucket=dst_bucket, Key=item["Key"])["UploadId"]
               for item in listed}
    tasks = [(item["Key"], number, start, min(item["Size"], start + part) - 1)
             for item in listed for number, start in enumerate(range(0, item["Size"], part), start=1)]
    etags: dict[str, dict[int, str]] = {key: {} for key in uploads}

    def one(task: tuple[str, int, int, int]) -> None:
        key, number, start, end = task
        body = source.get_object(Bucket=src_bucket, Key=key, Range=f"bytes={start}-{end}")["Body"].read()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        answer = destination.upload_part(Bucket=dst_bucket, Key=key, UploadId=uploads[key], PartNumber=number,
                                         Body=body, ContentMD5=md5)
        etags[key][number] = answer["ETag"]

    with concurrent.futures.ThreadPoolExecutor(args.part_concurrency or 8) as pool:
        list(pool.map(one, tasks))
    for key, upload_id in uploads.items():
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in sorted(etags[key].items())]
        destination.complete_multipart_upload(Bucket=dst_bucket, Key=key, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})


# -- the ground ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _servers(workdir: Path) -> Iterator[tuple[Any, Any]]:
    from tests.ground.s3 import start_minio

    metrics = {"MINIO_PROMETHEUS_AUTH_TYPE": "public"}  # request counts by kind, read by this script only
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(start_minio(workdir, "bench-a", "bench-a-admin", secrets.token_hex(16),
                                            extra_env=metrics))
        b = stack.enter_context(start_minio(workdir, "bench-b", "bench-b-admin", secrets.token_hex(16),
                                            extra_env=metrics))
        yield a, b


def _servers_cpu_seconds(servers: tuple[Any, ...]) -> float:
    """User + system CPU the MinIO processes have used so far (fields 14 and 15 of /proc/<pid>/stat, in ticks)."""
    ticks = 0
    for server in servers:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _requests(servers: tuple[Any, ...]) -> dict[str, float]:
    import urllib.request

    counts: dict[str, float] = {}
    for server in servers:
        with urllib.request.urlopen(server.endpoint + METRICS, timeout=30) as answer:
            text = answer.read().decode()
        for api, value in _REQUESTS.findall(text):
            counts[api] = counts.get(api, 0.0) + float(value)
    return counts


def _fill(server: Any, workloads: list[Workload]) -> None:
    client = server.client()
    filled = set()
    for workload in workloads:
        if workload.bucket in filled:
            continue  # the server-side workload copies the streaming one's objects
        filled.add(workload.bucket)
        client.create_bucket(Bucket=workload.bucket)
        if workload.small:
            payload = os.urandom(workload.object_size)

            def put(index: int, bucket: str = workload.bucket, payload: bytes = payload) -> None:
                client.put_object(Bucket=bucket, Key=f"small/{index:06d}.bin",
                                  Body=index.to_bytes(4, "big") + payload[4:])

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(put, range(workload.objects)))
        else:
            big = bytearray(os.urandom(workload.object_size))
            for index in range(workload.objects):
                big[:8] = index.to_bytes(8, "big")
                client.upload_fileobj(io.BytesIO(big), workload.bucket, f"big/{index}.bin")


def _empty(server: Any, bucket: str) -> None:
    from tests.ground.s3 import empty_and_delete_bucket

    empty_and_delete_bucket(server, bucket)


def _tools(workload: Workload, args: argparse.Namespace) -> dict[str, Callable[..., tuple[float, float, int, float]]]:
    from datamover.engine import MigrationOptions

    matched = MigrationOptions().concurrency  # datamover's default objects in flight
    if workload.small:
        tools = {
            "datamover": _datamover(None, None),
            f"rclone (matched, {matched})": _rclone(lambda w: [f"--transfers={matched}", f"--checkers={matched}"]),
            "rclone (64)": _rclone(lambda w: ["--transfers=64", "--checkers=64"]),
            "s5cmd": _s5cmd,
            "pipe": _pipe,
        }
        if args.sweep:
            for concurrency in (8, 16, 64):
                tools[f"datamover c={concurrency}"] = _datamover(concurrency, None)
        return tools
    big_flags = ["--s3-chunk-size=16M", "--s3-upload-cutoff=16M", "--s3-copy-cutoff=5G"]
    if workload.server_side:
        return {
            "datamover": _datamover(None, None),
            "rclone": _rclone(lambda w: [f"--transfers={w.objects}", f"--checkers={w.objects}", *big_flags]),
            "s5cmd": _s5cmd,
        }
    tools = {
        "datamover": _datamover(None, None),
        # Matched: as many objects at once, 8 parts in flight in all (2 per object), 16 MiB parts.
        "rclone (matched)": _rclone(lambda w: [f"--transfers={w.objects}", f"--checkers={w.objects}", *big_flags,
                                               f"--s3-upload-concurrency={max(1, 8 // w.objects)}"]),
        "rclone (defaults)": _rclone(lambda w: [f"--transfers={w.objects}"]),
        "s5cmd": _s5cmd,
        "pipe": _pipe,
    }
    if args.sweep:
        for parts in (4, 16):
            tools[f"datamover p={parts}"] = _datamover(None, parts)
    return tools


# -- report -------------------------------------------------------------------------------------------------------


def _table(rows: list[Row], loads: dict[str, tuple[float, float]]) -> list[str]:
    lines = ["| workload | tool | median rate | vs rclone (matched / best) | vs s5cmd | vs pipe | CPU ms per object "
             "| servers' CPU ms per object | peak RSS | requests per object |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_workload: dict[str, list[Row]] = {}
    for row in rows:
        by_workload.setdefault(row.workload.name, []).append(row)
    for name, group in by_workload.items():
        rates = {row.tool: row.median(lambda s: s.rate) for row in group}
        rclones = {tool: rate for tool, rate in rates.items() if tool.startswith("rclone")}
        matched = next((rate for tool, rate in rclones.items() if "matched" in tool or
                        tool == "rclone"), None)
        best = max(rclones.values()) if rclones else None
        for row in group:
            rate = rates[row.tool]
            objects = row.workload.objects
            requests = {api: value / objects for api, value in row.samples[-1].requests.items()
                        if value / objects >= 0.005}
            cells = [
                name if row is group[0] else "", row.tool,
                f"{rate:,.0f} {row.workload.unit}" if rate >= 100 else f"{rate:.1f} {row.workload.unit}",
                f"{rate / matched:.2f}x / {rate / best:.2f}x" if matched and best else "—",
                f"{rate / rates['s5cmd']:.2f}x" if "s5cmd" in rates else "—",
                f"{rate / rates['pipe']:.2f}x" if "pipe" in rates else "—",
                f"{row.median(lambda s: s.cpu_ms_per_object):.2f}",
                f"{row.median(lambda s: s.server_cpu_ms_per_object):.2f}",
                f"{max(s.rss_mib for s in row.samples)} MiB",
                ", ".join(f"{api} {value:.2f}" for api, value in sorted(requests.items())) or "—",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        load = loads.get(name)
        if load:
            lines.append(f"| | *load average before / after* | {load[0]:.1f} / {load[1]:.1f} | | | | | | | |")
    return lines


def _plot(rows: list[Row]) -> list[str]:
    """Bars of each tool's median rate, per workload, relative to the fastest tool (text, so it diffs)."""
    lines = ["```text"]
    by_workload: dict[str, list[Row]] = {}
    for row in rows:
        by_workload.setdefault(row.workload.name, []).append(row)
    for name, group in by_workload.items():
        rates = {row.tool: row.median(lambda s: s.rate) for row in group}
        top = max(rates.values())
        lines.append(name)
        for tool, rate in rates.items():
            bar = "█" * max(1, round(40 * rate / top))
            lines.append(f"  {tool:<18} {bar:<40} {rate:,.0f} {group[0].workload.unit}")
    lines.append("```")
    return lines


def _abort_latency(src: Any, dst: Any, size: int, runs: int) -> list[tuple[float, float]]:
    """(seconds from abort request to migrate() returning with every upload aborted, seconds from the request to the
    last chunk read), for a `size` object stopped mid-download, in this process."""
    from datamover.backends import open_store
    from datamover.backends.s3 import S3Config
    from datamover.engine import AbortSignal, MigrationOptions, NullSink, Outcome, migrate

    src.client().create_bucket(Bucket="src-abort")
    src.client().upload_fileobj(io.BytesIO(os.urandom(size)), "src-abort", "one.bin")

    def config(server: Any, name: str) -> S3Config:
        return S3Config(bucket=name, endpoint=server.endpoint, region=REGION, access_key_id=server.access_key,
                        secret_access_key=server.secret_key, addressing_style="path")

    def one_run(dst_bucket: str) -> tuple[float, float]:
        downloading = threading.Event()
        chunks, last_chunk = 0, 0.0

        def hook(name: str, key: str | None) -> None:
            nonlocal chunks, last_chunk
            if name == "between_chunks":
                chunks += 1
                last_chunk = time.monotonic()
                if chunks >= min(96, size // MiB // 2):  # well into the download
                    downloading.set()

        abort = AbortSignal(on_checkpoint=hook)
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(migrate(
            open_store(config(src, "src-abort")), open_store(config(dst, dst_bucket)), MigrationOptions(), abort,
            NullSink())))
        worker.start()
        downloading.wait(300)
        requested = time.monotonic()
        abort.request("bench")
        worker.join()
        stopped = time.monotonic()
        assert outcome[0].outcome is Outcome.ABORTED, outcome[0]
        left = dst.client().list_multipart_uploads(Bucket=dst_bucket).get("Uploads", [])
        assert not left, f"uploads left open: {left}"
        return stopped - requested, max(0.0, last_chunk - requested)

    results = []
    for run in range(runs):
        dst_bucket = f"abort-dst-{run}"
        dst.client().create_bucket(Bucket=dst_bucket)
        results.append(one_run(dst_bucket))
        _empty(dst, dst_bucket)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k x 4 KiB and 4 x 64 MiB only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also datamover at other concurrencies")
    parser.add_argument("--write-doc", action="store_true", help=f"rewrite the table in {DOC.relative_to(REPO)}")
    parser.add_argument("--abort-mib", type=int, default=None, help="abort latency object (0: skip)")
    parser.add_argument("--only", nargs="*", default=None, help="names of the workloads to run (as printed)")
    parser.add_argument("--child", choices=("datamover", "pipe"), help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--part-concurrency", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "datamover":
        _child_datamover(args)
        return
    if args.child == "pipe":
        _child_pipe(args)
        return

    big_mib = 64 if args.quick else 256
    workloads = [Workload("1k x 4 KiB", "src-1k", 1000, 4096)]
    if not args.quick:
        workloads.append(Workload("10k x 4 KiB", "src-10k", 10_000, 4096))
    workloads.append(Workload(f"4 x {big_mib} MiB", "src-big", 4, big_mib * MiB))
    workloads.append(Workload(f"4 x {big_mib} MiB server-side", "src-big", 4, big_mib * MiB, server_side=True))
    if args.only:
        workloads = [w for w in workloads if w.name in args.only]
    abort_mib = args.abort_mib if args.abort_mib is not None else (256 if args.quick else 1024)

    rows: list[Row] = []
    loads: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dm-bench-", dir=os.environ.get("DM_BENCH_TMP")) as tmp, \
            _servers(Path(tmp)) as (a, b):
        print(f"filling cloud A: {', '.join(w.name for w in workloads if not w.server_side)} ...", flush=True)
        _fill(a, workloads)
        for workload in workloads:
            tools = _tools(workload, args)
            workload_rows = {tool: Row(workload, tool) for tool in tools}
            before = os.getloadavg()[0]
            names = list(tools)
            for round_ in range(args.rounds):
                shift = round_ % len(names)
                for tool in names[shift:] + names[:shift]:
                    destination = a if workload.server_side else b
                    bucket = f"dst-{secrets.token_hex(6)}"
                    destination.client().create_bucket(Bucket=bucket)
                    counted = (a, b)
                    start_counts = _requests(counted)
                    start_cpu = _servers_cpu_seconds(counted)
                    seconds, cpu, rss, engine_seconds = tools[tool](workload, a, destination, bucket)
                    server_cpu = _servers_cpu_seconds(counted) - start_cpu
                    end_counts = _requests(counted)
                    requests = {api: end_counts[api] - start_counts.get(api, 0.0) for api in end_counts
                                if end_counts[api] - start_counts.get(api, 0.0) > 0}
                    sample = Sample(workload.rate(seconds), cpu * 1000 / workload.objects, rss, requests,
                                    engine_seconds or None, server_cpu * 1000 / workload.objects)
                    workload_rows[tool].samples.append(sample)
                    _empty(destination, bucket)
                    extra = f" (migrate() {workload.rate(engine_seconds):,.1f})" if engine_seconds else ""
                    print(f"  {workload.name:<26} round {round_ + 1} {tool:<18} {sample.rate:9,.1f} {workload.unit}"
                          f"{extra}  CPU {sample.cpu_ms_per_object:7.2f} ms/object  servers' CPU "
                          f"{sample.server_cpu_ms_per_object:7.2f} ms/object  RSS {rss} MiB", flush=True)
            loads[workload.name] = (before, os.getloadavg()[0])
            rows.extend(workload_rows.values())
        latencies = _abort_latency(a, b, abort_mib * MiB, args.rounds) if abort_mib else []

    table = _table(rows, loads)
    plot = _plot(rows)
    streamed = next((r for r in rows if r.tool == "datamover" and not r.workload.small
                     and not r.workload.server_side), None)
    server_side = next((r for r in rows if r.tool == "datamover" and r.workload.server_side), None)
    notes = []
    if streamed and server_side:
        ratio = server_side.median(lambda s: s.rate) / streamed.median(lambda s: s.rate)
        notes.append(f"Server-side copy vs streaming the same objects between the two servers: {ratio:.1f}x.")
    if latencies:
        stop = [s for s, _ in latencies]
        chunk = [c for _, c in latencies]
        notes.append(f"Abort of a {abort_mib} MiB object mid-download (request → migrate() returned, every upload "
                     f"aborted): median {statistics.median(stop) * 1000:.0f} ms, max {max(stop) * 1000:.0f} ms; last "
                     f"chunk read at most {max(chunk) * 1000:.0f} ms after the request.")
    for row in rows:
        if row.tool == "datamover" and row.workload.small:
            # The servers' CPU per object is the least any client leaves them; a client costing nothing would still
            # wait for it, on the CPUs the servers share with it here.
            floor = min(r.median(lambda s: s.server_cpu_ms_per_object) for r in rows if r.workload == row.workload)
            ceiling = (os.cpu_count() or 1) * 1000 / floor
            notes.append(f"{row.workload.name}: the servers alone use at least {floor:.2f} ms of CPU per object, so no "
                         f"client reaches more than {ceiling:,.0f} objects/s on these {os.cpu_count()} CPUs.")
    load = os.getloadavg()
    notes.append(f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs; load average at the end "
                 f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; command: `.venv/bin/python bench/engine_vs_rclone.py"
                 f"{''.join(' ' + shlex.quote(arg) for arg in sys.argv[1:])}`.")
    print()
    print("\n".join(table))
    print()
    print("\n".join(plot))
    print()
    print("\n".join(notes))
    if args.write_doc:
        text = DOC.read_text()
        block = "\n".join([BEGIN, *table, "", *plot, "", *notes, END])
        DOC.write_text(text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):])
        print(f"\nwrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
