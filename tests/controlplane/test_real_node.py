"""What only a real node shows: worker pods and the operator run from the image, under the chart's securityContext.

The session's node (tests/controlplane/conftest.py) runs every pod of this tier; these tests look at the pods
themselves: where they ran, as whom, with which rights, that they exited cleanly and that `kubectl logs` has them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.conftest import Cluster, migration_job
from tests.ground import image
from tests.ground.node import Node
from tests.ground.s3 import rclone_check
from tests.ground.stack import OPERATOR_NAMESPACE, OperatorRelease

pytestmark = pytest.mark.node_runtime


def test_a_copy_runs_to_succeeded_in_worker_pods_the_kubelet_started(cluster: Cluster, node: Node, cloud_a: Any,
                                                                     cloud_b: Any) -> None:
    src, dst = "photos-src", "photos-dst"
    s3 = cloud_a.client()
    s3.create_bucket(Bucket=src)
    cloud_b.client().create_bucket(Bucket=dst)
    for i in range(12):
        s3.put_object(Bucket=src, Key=f"photos/{i:03d}.jpg", Body=os.urandom(64 * 1024 + i))
    s3.put_object(Bucket=src, Key="video/big.bin", Body=os.urandom(12 * 1024 * 1024))  # multipart
    cluster.apply(migration_job("copy", cloud_a, src, cloud_b, dst, parallelism=2))
    done = cluster.wait_phase("copy", {"succeeded", "failed", "aborted", "cancelled"}, timeout=300)
    assert done["status"]["phase"] == "succeeded", json.dumps(done["status"], indent=1)
    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stderr

    workers = json.loads(cluster.kubectl("get", "pods", "-n", cluster.namespace, "-l",
                                         "app.kubernetes.io/managed-by=datamover-operator", "-o", "json").stdout)
    assert len(workers["items"]) >= 2
    for pod in workers["items"]:
        spec = pod["spec"]
        assert spec["nodeName"] == node.name
        assert spec["securityContext"]["runAsUser"] == 65532 and spec["securityContext"]["runAsNonRoot"]
        (container,) = spec["containers"]
        assert container["image"] == image.IMAGE_NAME
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        (status,) = pod["status"]["containerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == 0, status
        logs = cluster.kubectl("logs", "-n", cluster.namespace, pod["metadata"]["name"]).stdout
        assert logs.strip(), f"kubectl logs {pod['metadata']['name']} printed nothing"


def _proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def test_the_operator_runs_under_the_charts_security_context(operator: OperatorRelease, node: Node) -> None:
    pod = operator.pod()
    assert pod["spec"]["nodeName"] == node.name
    (status,) = pod["status"]["containerStatuses"]
    pid = node.task_pids()[status["containerID"].removeprefix("containerd://")]
    proc = _proc_status(pid)
    assert proc["Uid"].split() == ["65532"] * 4 and proc["Gid"].split() == ["65532"] * 4
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapPrm"], 16) == 0
    assert proc["Seccomp"].strip() == "2"  # filter mode: the runtime's default profile
    assert proc["NoNewPrivs"].strip() == "1"
    root_mount = next(line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                      if line.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(","), root_mount
    logs = operator.cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"]).stdout
    assert "Traceback" not in logs, logs
