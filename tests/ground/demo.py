"""`make demo`: datamover end to end on the local ground — one migration watched live, a second one aborted.

Starts the control plane, the real node (kubelet, containerd, runc) with the datamover image and two MinIO "clouds",
installs the chart with helm, fills cloud A, and drives everything with kubectl as a user would. Everything it
started is stopped and cleaned up on the way out, also on Ctrl-C. Needs root, as the node does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.ground.s3 import S3Server, rclone_check
from tests.ground.stack import Stack, local_stack

NAMESPACE = "demo"
MiB = 1024 * 1024
FINAL = {"succeeded", "failed", "aborted", "cancelled"}
SMALL = {"small": 20, "large": 8, "large_size": 32 * MiB}  # --small (CI, and tests/controlplane/test_demo.py)
FULL = {"small": 200, "large": 8, "large_size": 128 * MiB}


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fill(server: S3Server, bucket: str, *, small: int, large: int, large_size: int) -> None:
    s3 = server.client()
    s3.create_bucket(Bucket=bucket)
    for i in range(small):
        s3.put_object(Bucket=bucket, Key=f"photos/{i:04d}.jpg", Body=os.urandom(4096 + i * 97),
                      ContentType="image/jpeg")
    chunk = os.urandom(MiB)
    for i in range(large):
        s3.put_object(Bucket=bucket, Key=f"videos/{i:02d}.mp4", Body=chunk * (large_size // MiB),
                      ContentType="video/mp4")


def migration(name: str, stack: Stack, bucket: str, **spec: Any) -> str:
    def side(server: S3Server, secret: str) -> dict[str, Any]:
        return {"bucket": bucket, "endpoint": server.endpoint, "region": server.region, "addressingStyle": "path",
                "credentialsSecretRef": {"name": secret}}

    return yaml.safe_dump({
        "apiVersion": "datamover.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"source": side(stack.cloud_a, "cloud-a"), "destination": side(stack.cloud_b, "cloud-b"), **spec},
    })


def status(stack: Stack, name: str) -> dict[str, Any]:
    out = stack.control_plane.kubectl("get", "mj", name, "-n", NAMESPACE, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def watch(stack: Stack, name: str, *, until: set[str], timeout: float = 600) -> dict[str, Any]:
    """Print the `kubectl get mj` line whenever it changes, until the phase is one of `until`."""
    shown, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stack.control_plane.kubectl("get", "mj", name, "-n", NAMESPACE, "--no-headers").stdout.strip()
        if line != shown:
            print(f"    {line}", flush=True)
            shown = line
        current = status(stack, name)
        if current.get("phase") in until:
            return current
        time.sleep(0.5)
    raise SystemExit(f"demo: {name} did not reach {sorted(until)} in {timeout:.0f}s")


def run(stack: Stack, *, small: int, large: int, large_size: int) -> int:
    kubectl = stack.control_plane.kubectl
    say(f"Filling cloud A ({stack.cloud_a.endpoint}): bucket 'gallery' and bucket 'archive'")
    fill(stack.cloud_a, "gallery", small=small, large=2, large_size=large_size)
    # Big enough that the abort lands while multipart uploads are in flight, even on a fast loopback.
    fill(stack.cloud_a, "archive", small=small, large=large, large_size=large_size)
    for bucket in ("gallery", "archive"):
        stack.cloud_b.client().create_bucket(Bucket=bucket)

    say("Namespace 'demo' with one credentials Secret per cloud")
    kubectl("create", "namespace", NAMESPACE)
    for secret, server in (("cloud-a", stack.cloud_a), ("cloud-b", stack.cloud_b)):
        kubectl("create", "secret", "generic", secret, "-n", NAMESPACE,
                f"--from-literal=accessKeyId={server.access_key}",
                f"--from-literal=secretAccessKey={server.secret_key}")

    say("kubectl apply: MigrationJob 'gallery' (cloud A -> cloud B, 2 workers), watched live")
    kubectl("apply", "-f", "-", input=migration("gallery", stack, "gallery", parallelism=2))
    gallery = watch(stack, "gallery", until=FINAL)

    say("kubectl apply: MigrationJob 'archive' (larger), then abort it mid-way")
    kubectl("apply", "-f", "-", input=migration("archive", stack, "archive", concurrency=1, partSize="5Mi"))
    deadline = time.monotonic() + 120
    current = status(stack, "archive")
    while not any(w.get("openUploads") for w in current.get("workers", {}).values()):
        if time.monotonic() > deadline or current.get("phase") in FINAL:
            break
        time.sleep(0.05)
        current = status(stack, "archive")
    print("    $ kubectl patch mj archive --type merge -p '{\"spec\":{\"abort\":true}}'", flush=True)
    patch = kubectl("patch", "mj", "archive", "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"abort":true}}',
                    check=False)
    print(f"    {(patch.stdout or patch.stderr).strip()}", flush=True)
    archive = watch(stack, "archive", until=FINAL)

    say("Final phases")
    print(kubectl("get", "mj", "-n", NAMESPACE).stdout, flush=True)

    say("Proof of cleanup")
    uploads = stack.cloud_b.client().list_multipart_uploads(Bucket="archive").get("Uploads", [])
    print(f"    open multipart uploads on cloud B/archive: {len(uploads)}")
    full = rclone_check(stack.cloud_a, "gallery", stack.cloud_b, "gallery")
    print(f"    rclone check gallery (A vs B): exit {full.returncode}")
    # --one-way: every object that reached cloud B is identical to its original; the rest were never started.
    moved = rclone_check(stack.cloud_b, "archive", stack.cloud_a, "archive", "--one-way")
    total = stack.cloud_a.client().list_objects_v2(Bucket="archive").get("KeyCount", 0)
    at_b = stack.cloud_b.client().list_objects_v2(Bucket="archive").get("KeyCount", 0)
    print(f"    archive: {at_b} of {total} object(s) copied before the abort; abort rolls nothing back")
    print(f"    rclone check --one-way archive (what reached B vs A): exit {moved.returncode}")

    print(f"\nDEMO RESULT: gallery={gallery.get('phase')} archive={archive.get('phase')} "
          f"open-uploads={len(uploads)} rclone-gallery={'clean' if full.returncode == 0 else 'DIFFERENT'} "
          f"rclone-archive-copied={'clean' if moved.returncode == 0 else 'DIFFERENT'}", flush=True)
    ok = gallery.get("phase") == "succeeded" and archive.get("phase") in ("aborted", "succeeded") \
        and not uploads and full.returncode == 0 and moved.returncode == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--small", action="store_true", help="a short dataset (CI)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here instead of a temp dir")
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM both unwind through the context managers, which stop every process started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = SMALL if args.small else FULL
    with tempfile.TemporaryDirectory(prefix="datamover-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        say("Starting the local ground: etcd, kube-apiserver, kube-controller-manager, a node (kubelet, containerd, "
            "runc), 2x MinIO, the chart (helm install)")
        started = time.monotonic()
        try:
            with local_stack(workdir) as stack:
                print(f"    up in {time.monotonic() - started:.1f}s; API server {stack.control_plane.server}")
                code = run(stack, **sizes)
                say("Stopping everything")
        except KeyboardInterrupt:
            print("\ndemo: interrupted; everything it started has been stopped", file=sys.stderr)
            return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
