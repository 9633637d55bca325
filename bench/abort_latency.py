"""Operator abort latency on the local ground: `kubectl patch` spec.abort -> phase aborting -> phase aborted.

Prints median, p99 and max over N aborts each with small (4 KiB) objects and with 256 MiB objects in flight, and the
load average. A benchmark, not a test: it asserts nothing about time, it measures.

    .venv/bin/python bench/abort_latency.py [--runs 20] [--large-size-mib 256]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamover import kubeapi
from tests.ground.stack import Stack, local_stack

MiB = 1024 * 1024
NAMESPACE = "bench"


def _status(stack: Stack, name: str) -> dict[str, Any]:
    # The API client, not kubectl: a poll must cost milliseconds, or the poll itself is what gets measured.
    api = _API.get(stack.control_plane.server)
    if api is None:
        api = kubeapi.Client(kubeapi.load_config(str(stack.control_plane.admin_kubeconfig)))
        _API[stack.control_plane.server] = api
    return dict(api.get(kubeapi.MIGRATION_JOBS, NAMESPACE, name).get("status") or {})


_API: dict[str, kubeapi.Client] = {}


def _job(stack: Stack, name: str, src: str, dst: str) -> str:
    def side(server: Any, bucket: str, secret: str) -> dict[str, Any]:
        return {"bucket": bucket, "endpoint": server.endpoint, "region": server.region, "addressingStyle": "path",
                "credentialsSecretRef": {"name": secret}}

    return json.dumps({
        "apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"source": side(stack.cloud_a, src, "cloud-a"), "destination": side(stack.cloud_b, dst, "cloud-b"),
                 "concurrency": 2, "partSize": "8Mi", "abortGracePeriodSeconds": 30},
    })


def _in_flight(status: dict[str, Any], large: bool) -> bool:
    workers = status.get("workers", {}).values()
    if large:
        return any(w.get("openUploads") for w in workers)
    return any(w.get("objectsMigrated", 0) > 0 for w in workers)


def one_abort(stack: Stack, src: str, large: bool) -> tuple[float, float]:
    kubectl = stack.control_plane.kubectl
    name, dst = f"abort-{uuid.uuid4().hex[:6]}", f"dst-{uuid.uuid4().hex[:8]}"
    stack.cloud_b.client().create_bucket(Bucket=dst)
    kubectl("apply", "-f", "-", input=_job(stack, name, src, dst))
    deadline = time.monotonic() + 120
    while not _in_flight(_status(stack, name), large):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: nothing in flight after 120s: {_status(stack, name)}")
        time.sleep(0.02)
    patched = time.monotonic()  # what a user sees: from running `kubectl patch` (its start-up included)
    kubectl("patch", "mj", name, "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"abort":true}}')
    to_aborting = to_aborted = 0.0
    while True:
        phase = _status(stack, name).get("phase")
        if phase in ("aborting", "aborted", "succeeded") and not to_aborting:
            to_aborting = time.monotonic() - patched
        if phase in ("aborted", "succeeded", "failed"):
            to_aborted = time.monotonic() - patched
            if phase != "aborted":
                print(f"  note: {name} ended {phase}", file=sys.stderr)
            break
        time.sleep(0.01)
    return to_aborting, to_aborted


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--large-size-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datamover-bench-") as tmp, local_stack(Path(tmp)) as stack:
        kubectl = stack.control_plane.kubectl
        kubectl("create", "namespace", NAMESPACE)
        for secret, server in (("cloud-a", stack.cloud_a), ("cloud-b", stack.cloud_b)):
            kubectl("create", "secret", "generic", secret, "-n", NAMESPACE,
                    f"--from-literal=accessKeyId={server.access_key}",
                    f"--from-literal=secretAccessKey={server.secret_key}")
        s3 = stack.cloud_a.client()
        s3.create_bucket(Bucket="small")
        for i in range(2000):
            s3.put_object(Bucket="small", Key=f"k/{i:05d}", Body=os.urandom(4096))
        s3.create_bucket(Bucket="large")
        chunk = os.urandom(MiB)
        for i in range(2):
            s3.put_object(Bucket="large", Key=f"big/{i}", Body=chunk * args.large_size_mib)
        rows = []
        for label, bucket, large in (("4 KiB objects", "small", False),
                                     (f"{args.large_size_mib} MiB objects", "large", True)):
            samples = [one_abort(stack, bucket, large) for _ in range(args.runs)]
            aborting = [s[0] for s in samples]
            aborted = [s[1] for s in samples]
            rows.append((label, _stats(aborting), _stats(aborted), os.getloadavg()[0]))
        print(f"\nabort latency over {args.runs} aborts each (seconds; p99 is the nearest rank)")
        print(f"{'in flight':<20} {'->aborting median':>18} {'p99':>6} {'max':>6} {'->aborted median':>17} "
              f"{'p99':>6} {'max':>6} {'load avg':>9}")
        for label, (a_med, a_p99, a_max), (d_med, d_p99, d_max), load in rows:
            print(f"{label:<20} {a_med:>18.2f} {a_p99:>6.2f} {a_max:>6.2f} {d_med:>17.2f} {d_p99:>6.2f} "
                  f"{d_max:>6.2f} {load:>9.2f}")


if __name__ == "__main__":
    main()
