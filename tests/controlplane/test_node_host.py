"""The real node leaves the host as it found it: no rule, route, link, mount, cgroup, sysctl or directory left over.

A node is started, runs one pod of the datamover image (so containerd, runc, CNI and the kubelet all do their real
work: a netns, a veth, overlay mounts, pod cgroups, KUBE-* chains), and is stopped; the host is compared before and
after with `iptables-save`, `ip route`, `ip link`, the mount table, the cgroup tree and the sysctls the kubelet sets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.ground import image
from tests.ground.controlplane import start_control_plane
from tests.ground.node import host_changes, host_lock, host_snapshot, start_node

POD_TIMEOUT = 120.0


def test_a_node_that_ran_a_pod_leaves_the_host_unchanged(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("node-host")
    with start_control_plane(workdir / "controlplane") as cp, host_lock():
        before = host_snapshot()
        with start_node(cp, workdir / "node", images=[image.archive()]) as node:
            pod = {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "namespace": "default"},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "hello", "image": image.IMAGE_NAME, "imagePullPolicy": "Never",
                        "command": ["python3", "-c", "import os; print('hello from uid', os.getuid())"],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            }
            cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
            deadline = time.monotonic() + POD_TIMEOUT
            while True:
                node.check_alive()
                status = json.loads(cp.kubectl("get", "pod", "hello", "-o", "json").stdout).get("status", {})
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                assert time.monotonic() < deadline, f"pod hello not done after {POD_TIMEOUT:.0f}s: {status}"
                time.sleep(0.5)
            assert status["phase"] == "Succeeded", status
            assert cp.kubectl("logs", "hello").stdout.strip() == "hello from uid 65532"
            during = host_snapshot()
        after = host_snapshot()
    assert host_changes(before, during), "the node changed nothing on the host: the comparison would prove nothing"
    assert host_changes(before, after) == []
    # The node's work directory keeps its logs only.
    assert sorted(p.name for p in Path(workdir / "node").iterdir()) == ["logs"]
