"""datamover as users run it: the chart installed with helm onto a real node whose kubelet runs the image.

A control plane of its own (the session's has the node agent), a real node (tests/ground/node.py) with the image
imported into its containerd, two MinIO servers listening on the node's bridge address (the only address of this
run that its pods reach), and the chart installed by `helm install` from charts/ exactly as docs/install.md says.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.test_operator import assert_invariant, fill, open_uploads
from tests.ground import image
from tests.ground.binaries import binary
from tests.ground.controlplane import ControlPlane, start_control_plane
from tests.ground.node import Node, start_node
from tests.ground.s3 import S3Server, empty_and_delete_bucket, rclone_check, start_minio

REPO = Path(__file__).resolve().parents[2]
RELEASE_NAMESPACE = "datamover-system"
PHASE_TIMEOUT = 300.0


@dataclass
class RealGround:
    control_plane: ControlPlane
    node: Node
    cloud_a: S3Server
    cloud_b: S3Server

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, input=input, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


def helm(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    home = cp.workdir / "helm"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(cp.admin_kubeconfig)}
    result = subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, env=env, timeout=600,
                            check=False, cwd=REPO)
    assert result.returncode == 0, f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def ground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealGround]:
    workdir = tmp_path_factory.mktemp("real-node")
    with contextlib.ExitStack() as stack:
        cp = stack.enter_context(start_control_plane(workdir / "controlplane"))
        node = stack.enter_context(start_node(cp, workdir / "node", images=[image.archive()]))
        cloud_a = stack.enter_context(start_minio(workdir, "cloud-a", "cloud-a-admin", secrets.token_hex(16),
                                                  host=node.ip))
        cloud_b = stack.enter_context(start_minio(workdir, "cloud-b", "cloud-b-admin", secrets.token_hex(16),
                                                  host=node.ip))
        helm(cp, "install", "datamover", "charts/datamover", "--namespace", RELEASE_NAMESPACE, "--create-namespace",
             "--wait", "--timeout", "4m")
        yield RealGround(cp, node, cloud_a, cloud_b)
        helm(cp, "uninstall", "datamover", "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "2m")


def _pods(ground: RealGround, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ground.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def _wait_phase(ground: RealGround, namespace: str, name: str, phases: set[str]) -> dict[str, Any]:
    return _wait(ground, namespace, name, lambda o: (o.get("status") or {}).get("phase") in phases, f"phase {phases}")


def _wait(ground: RealGround, namespace: str, name: str, predicate: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + PHASE_TIMEOUT
    while True:
        ground.node.check_alive()
        obj: dict[str, Any] = ground.json("get", "migrationjob", name, "-n", namespace)
        if predicate(obj):
            return obj
        if time.monotonic() > deadline:
            pods = ground.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            raise AssertionError(f"{name}: {what} not seen after {PHASE_TIMEOUT:.0f}s: "
                                 f"{json.dumps(obj.get('status'), indent=1)[:3000]}\npods:\n{pods}")
        time.sleep(0.5)


@contextlib.contextmanager
def _namespace_with_buckets(ground: RealGround) -> Iterator[tuple[str, str, str]]:
    """A fresh namespace holding both clouds' Secrets, and a fresh bucket on each cloud: (namespace, src, dst)."""
    namespace = f"mj-{uuid.uuid4().hex[:8]}"
    ground.kubectl("create", "namespace", namespace)
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    ground.cloud_a.client().create_bucket(Bucket=src)
    ground.cloud_b.client().create_bucket(Bucket=dst)
    try:
        for name, server in (("cloud-a", ground.cloud_a), ("cloud-b", ground.cloud_b)):
            ground.kubectl("create", "secret", "generic", name, "-n", namespace,
                           f"--from-literal=accessKeyId={server.access_key}",
                           f"--from-literal=secretAccessKey={server.secret_key}")
        yield namespace, src, dst
    finally:
        empty_and_delete_bucket(ground.cloud_a, src)
        empty_and_delete_bucket(ground.cloud_b, dst)
        ground.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _migration_job(ground: RealGround, name: str, src: str, dst: str, **spec: Any) -> str:
    return yaml.safe_dump({
        "apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob", "metadata": {"name": name},
        "spec": {
            "source": {"bucket": src, "endpoint": ground.cloud_a.endpoint, "region": ground.cloud_a.region,
                       "addressingStyle": "path", "credentialsSecretRef": {"name": "cloud-a"}},
            "destination": {"bucket": dst, "endpoint": ground.cloud_b.endpoint, "region": ground.cloud_b.region,
                            "addressingStyle": "path", "credentialsSecretRef": {"name": "cloud-b"}},
            **spec,
        },
    })


def test_a_copy_runs_to_succeeded_in_worker_pods_the_kubelet_started(ground: RealGround) -> None:
    with _namespace_with_buckets(ground) as (namespace, src, dst):
        s3 = ground.cloud_a.client()
        for i in range(12):
            s3.put_object(Bucket=src, Key=f"photos/{i:03d}.jpg", Body=os.urandom(64 * 1024 + i))
        s3.put_object(Bucket=src, Key="video/big.bin", Body=os.urandom(12 * 1024 * 1024))  # multipart
        ground.kubectl("apply", "-n", namespace, "-f", "-", input=_migration_job(ground, "copy", src, dst,
                                                                                  parallelism=2))
        done = _wait_phase(ground, namespace, "copy", {"succeeded", "failed", "aborted", "cancelled"})
        assert done["status"]["phase"] == "succeeded", json.dumps(done["status"], indent=1)

        check = rclone_check(ground.cloud_a, src, ground.cloud_b, dst)
        assert check.returncode == 0, check.stderr

        workers = _pods(ground, namespace, "app.kubernetes.io/managed-by=datamover-operator")
        assert len(workers) >= 2
        for pod in workers:
            spec = pod["spec"]
            assert spec["nodeName"] == ground.node.name
            assert spec["securityContext"]["runAsUser"] == 65532 and spec["securityContext"]["runAsNonRoot"]
            (container,) = spec["containers"]
            assert container["image"] == image.IMAGE_NAME
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            (status,) = pod["status"]["containerStatuses"]
            assert status["state"]["terminated"]["exitCode"] == 0, status
            logs = ground.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
            assert logs.strip(), f"kubectl logs {pod['metadata']['name']} printed nothing"


def test_an_abort_mid_object_of_a_move_stops_the_pods_cleanly(ground: RealGround) -> None:
    """Workers in real pods stop on the abort (watched, or the kubelet's SIGTERM); each object is untouched or moved."""
    with _namespace_with_buckets(ground) as (namespace, src, dst):
        contents = fill(ground.cloud_a, src, small=20, large=6)
        ground.kubectl("apply", "-n", namespace, "-f", "-", input=_migration_job(
            ground, "stopme", src, dst, parallelism=2, concurrency=2, partSize="5Mi", remainSource=False,
            abortGracePeriodSeconds=30))
        _wait(ground, namespace, "stopme", lambda o: any(w.get("openUploads") for w in (o.get("status") or {})
                                                         .get("workers", {}).values()), "an open multipart upload")
        ground.kubectl("patch", "mj", "stopme", "-n", namespace, "--type", "merge", "-p", '{"spec":{"abort":true}}')
        final = _wait_phase(ground, namespace, "stopme", {"aborted", "succeeded", "failed"})
        assert final["status"]["phase"] == "aborted", json.dumps(final["status"], indent=1)
        assert open_uploads(ground.cloud_b, dst) == []
        migrated = assert_invariant(ground.cloud_a, src, ground.cloud_b, dst, contents, remain_source=False)
        assert migrated < len(contents), "the abort came too late to stop anything"


def _proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def test_the_operator_runs_under_the_charts_security_context(ground: RealGround) -> None:
    (pod,) = _pods(ground, RELEASE_NAMESPACE, "app.kubernetes.io/component=operator")
    (status,) = pod["status"]["containerStatuses"]
    container_id = status["containerID"].removeprefix("containerd://")
    pid = ground.node.task_pids()[container_id]
    proc = _proc_status(pid)
    assert proc["Uid"].split() == ["65532"] * 4 and proc["Gid"].split() == ["65532"] * 4
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapPrm"], 16) == 0
    assert proc["Seccomp"].strip() == "2"  # filter mode: the runtime's default profile
    assert proc["NoNewPrivs"].strip() == "1"
    root_mount = next(line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                      if line.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(","), root_mount
    logs = ground.kubectl("logs", "-n", RELEASE_NAMESPACE, pod["metadata"]["name"]).stdout
    assert "Traceback" not in logs, logs
