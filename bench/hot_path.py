"""Which client library moves small objects fastest: the GET→PUT loop on each candidate, between two local MinIOs.

Not a test: it prints figures and asserts nothing about speed. The loop is what the engine does per small object
(GET the source, PUT it to the destination with Content-MD5), run by `--concurrency` threads in a fresh child
process per candidate and round, rounds interleaved with the order rotated; objects/s and CPU per object are medians.

    .venv/bin/python bench/hot_path.py                          # 1,000 x 4 KiB, 3 rounds, 16 threads
    .venv/bin/python bench/hot_path.py --objects 5000 --rounds 5 --candidates boto3 datamover

Candidates: `boto3` (the client as the S3 backend configured it before), `boto3-tuned` (parameter validation off,
no per-request checksums), `urllib3-botocore-signer` (urllib3's pool, botocore's SigV4 signer), `datamover` (the
backend's small-object path: `datamover.backends.s3.S3Store.open_read` + `put`), `obstore` (Rust object_store; it
cannot send Content-MD5 nor carry Expires, so it is measured, not a candidate for the engine as it is).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

CANDIDATES = ("boto3", "boto3-tuned", "urllib3-botocore-signer", "datamover", "obstore")
REGION = "us-east-1"


def _keys(count: int) -> list[str]:
    return [f"small/{index:06d}.bin" for index in range(count)]


def _boto3_copier(tuned: bool) -> Callable[[str], None]:
    import boto3
    import botocore.config

    def client(side: str) -> Any:
        options: dict[str, Any] = {"request_checksum_calculation": "when_required",
                                   "response_checksum_validation": "when_required"}
        if tuned:
            options["parameter_validation"] = False
        config = botocore.config.Config(region_name=REGION, max_pool_connections=64, s3={"addressing_style": "path"},
                                        retries={"mode": "standard", "total_max_attempts": 5}, **options)
        return boto3.session.Session().client(
            "s3", endpoint_url=os.environ[f"DM_{side}_ENDPOINT"], aws_access_key_id=os.environ[f"DM_{side}_KEY"],
            aws_secret_access_key=os.environ[f"DM_{side}_SECRET"], config=config)

    source, destination = client("SRC"), client("DST")
    src_bucket, dst_bucket = os.environ["DM_SRC_BUCKET"], os.environ["DM_DST_BUCKET"]

    def copy(key: str) -> None:
        body = source.get_object(Bucket=src_bucket, Key=key)["Body"].read()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        destination.put_object(Bucket=dst_bucket, Key=key, Body=body, ContentMD5=md5)

    return copy


def _urllib3_copier() -> Callable[[str], None]:
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    import urllib3

    def side(name: str) -> tuple[urllib3.PoolManager, botocore.auth.S3SigV4Auth, str]:
        credentials = botocore.credentials.Credentials(os.environ[f"DM_{name}_KEY"], os.environ[f"DM_{name}_SECRET"])
        base = f"{os.environ[f'DM_{name}_ENDPOINT']}/{os.environ[f'DM_{name}_BUCKET']}/"
        return urllib3.PoolManager(maxsize=64), botocore.auth.S3SigV4Auth(credentials, "s3", REGION), base

    (src_pool, src_signer, src_base), (dst_pool, dst_signer, dst_base) = side("SRC"), side("DST")

    def send(pool: urllib3.PoolManager, signer: Any, method: str, url: str, body: bytes | None,
             headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=headers)
        signer.add_auth(request)
        return pool.request(method, url, body=body, headers=dict(request.headers.items()), retries=False)

    def copy(key: str) -> None:
        got = send(src_pool, src_signer, "GET", src_base + key, None, {})
        assert got.status == 200, got.status
        body = got.data
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        put = send(dst_pool, dst_signer, "PUT", dst_base + key, body, {"Content-MD5": md5})
        assert put.status == 200, (put.status, put.data)

    return copy


def _datamover_copier() -> Callable[[str], None]:
    from datamover.backends.s3 import S3Config, S3Store

    def store(side: str) -> S3Store:
        return S3Store(S3Config(bucket=os.environ[f"DM_{side}_BUCKET"], endpoint=os.environ[f"DM_{side}_ENDPOINT"],
                                region=REGION, access_key_id=os.environ[f"DM_{side}_KEY"],
                                secret_access_key=os.environ[f"DM_{side}_SECRET"], addressing_style="path",
                                max_pool_connections=64))

    source, destination = store("SRC"), store("DST")

    def copy(key: str) -> None:
        stream = source.open_read(key, None, None, None)
        chunks = []
        while chunk := stream.read(1024 * 1024):
            chunks.append(chunk)
        stream.close()
        body = b"".join(chunks)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        destination.put(key, body, stream.info.attributes, md5)

    return copy


def _obstore_copier() -> Callable[[str], None]:
    import obstore
    from obstore.store import S3Store as ObStore

    def store(side: str) -> Any:
        return ObStore(os.environ[f"DM_{side}_BUCKET"], endpoint=os.environ[f"DM_{side}_ENDPOINT"], region=REGION,
                       access_key_id=os.environ[f"DM_{side}_KEY"], secret_access_key=os.environ[f"DM_{side}_SECRET"],
                       virtual_hosted_style_request=False,
                       client_options={"allow_http": True, "pool_max_idle_per_host": "64"})

    source, destination = store("SRC"), store("DST")

    def copy(key: str) -> None:
        got = obstore.get(source, key)
        body = got.bytes()
        hashlib.md5(body)  # what the engine would compute to verify
        obstore.put(destination, key, body, attributes=got.attributes)

    return copy


def _child(args: argparse.Namespace) -> None:
    makers: dict[str, Callable[[], Callable[[str], None]]] = {
        "boto3": lambda: _boto3_copier(tuned=False), "boto3-tuned": lambda: _boto3_copier(tuned=True),
        "urllib3-botocore-signer": _urllib3_copier, "datamover": _datamover_copier, "obstore": _obstore_copier,
    }
    copy = makers[args.child]()
    keys = _keys(args.objects)
    copy(keys[0])  # warm: connections, lazy imports, endpoint resolution
    began, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(copy, keys))
    seconds, after = time.monotonic() - began, resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds}))


@contextlib.contextmanager
def servers() -> Iterator[tuple[Any, Any]]:
    """Two MinIO servers on loopback, for the length of the block."""
    from tests.ground.s3 import start_minio

    with tempfile.TemporaryDirectory(prefix="dm-bench-") as tmp, contextlib.ExitStack() as stack:
        a = stack.enter_context(start_minio(Path(tmp), "bench-a", "bench-a-admin", secrets.token_hex(16)))
        b = stack.enter_context(start_minio(Path(tmp), "bench-b", "bench-b-admin", secrets.token_hex(16)))
        yield a, b


def side_env(prefix: str, server: Any, bucket: str) -> dict[str, str]:
    """A store's coordinates for a child process (credentials in the environment, never on argv)."""
    return {f"DM_{prefix}_ENDPOINT": server.endpoint, f"DM_{prefix}_KEY": server.access_key,
            f"DM_{prefix}_SECRET": server.secret_key, f"DM_{prefix}_BUCKET": bucket}


def fill_small(server: Any, bucket: str, keys: list[str], size: int = 4096) -> None:
    client = server.client()
    client.create_bucket(Bucket=bucket)
    payload = os.urandom(size)

    def put(index_key: tuple[int, str]) -> None:
        index, key = index_key
        client.put_object(Bucket=bucket, Key=key, Body=index.to_bytes(4, "big") + payload[4:])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, enumerate(keys)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--child", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if "obstore" in args.candidates and importlib.util.find_spec("obstore") is None:
        print("obstore is not installed (pip install -e '.[bench]'): measuring the others", flush=True)
        args.candidates.remove("obstore")
    from tests.ground.s3 import empty_and_delete_bucket

    rates: dict[str, list[float]] = {name: [] for name in args.candidates}
    cpu_ms: dict[str, list[float]] = {name: [] for name in args.candidates}
    with servers() as (a, b):
        fill_small(a, "src", _keys(args.objects))
        for round_ in range(args.rounds):
            shift = round_ % len(args.candidates)
            for name in args.candidates[shift:] + args.candidates[:shift]:
                bucket = f"dst-{round_}-{args.candidates.index(name)}"
                b.client().create_bucket(Bucket=bucket)
                env = {**os.environ, **side_env("SRC", a, "src"), **side_env("DST", b, bucket)}
                argv = [sys.executable, __file__, "--child", name, "--objects", str(args.objects),
                        "--concurrency", str(args.concurrency)]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise RuntimeError(f"{name} failed: {out.stderr[-2000:]}")
                report = json.loads(out.stdout.strip().splitlines()[-1])
                rates[name].append((args.objects - 1) / report["seconds"])
                cpu_ms[name].append(report["cpu"] * 1000 / (args.objects - 1))
                print(f"  round {round_ + 1} {name:<24} {rates[name][-1]:7.0f} objects/s "
                      f"{cpu_ms[name][-1]:5.2f} ms CPU/object", flush=True)
                empty_and_delete_bucket(b, bucket)
    load = os.getloadavg()
    print(f"\n{args.objects} x 4 KiB GET→PUT, {args.concurrency} threads, {args.rounds} rounds, medians; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    reference = statistics.median(rates[args.candidates[0]])
    print(f"{'candidate':<26} {'objects/s':>10} {'CPU ms/object':>14} {'vs ' + args.candidates[0]:>12}")
    for name in args.candidates:
        rate = statistics.median(rates[name])
        print(f"{name:<26} {rate:>10.0f} {statistics.median(cpu_ms[name]):>14.2f} {rate / reference:>11.2f}x")


if __name__ == "__main__":
    main()
