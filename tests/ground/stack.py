"""datamover installed by its chart (`helm install` from charts/datamover), as users install it.

Shared by the control-plane tests (as fixtures), `make demo` and the benches, so all run the product the same way:
the operator is the chart's Deployment and the worker pods are started by a kubelet from the datamover image, on
the ground's real node (tests/ground/node.py) or, under `make e2e`, on a cluster of the user's own.
`local_stack` brings the whole local ground up for the demo and the benches.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.ground import image
from tests.ground.binaries import binary
from tests.ground.controlplane import ControlPlane, start_control_plane
from tests.ground.external import E2E_WORKER_IMAGE
from tests.ground.node import Node, start_node
from tests.ground.procs import GroundError
from tests.ground.s3 import S3Server, start_minio

REPO = Path(__file__).resolve().parents[2]
CHART = "charts/datamover"
RELEASE = "datamover"
OPERATOR_NAMESPACE = "datamover-system"
OPERATOR_ACCOUNT = "datamover-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
READY_TIMEOUT = 300.0
# The chart's maxConcurrentJobs on the ground: well below the scale test's 200 jobs, so most of them queue, and above
# what any other test runs at once. At 8 the 200 one-pod jobs did not end within pytest's 15-minute timeout at a
# load average of 20 (about 12 jobs a minute; a worker pod lives 10-20 s); 16 lets twice as many run at once.
GROUND_MAX_CONCURRENT_JOBS = 16
# Helm values the ground sets. Worker pods request little: the chart's default (250m CPU each) would let only eight
# pods onto this 2-core node, and the ground's pods do little work each. The operator requests more than a worker
# (CPU shares: under contention it is served first) and its liveness probe is lenient: this machine's load average
# reaches 20 with other test runs, and with the chart's probe (5 s timeout, 3 failures) the kubelet killed a
# CPU-starved but working operator over and over in the 200-job test (kopf answers /healthz from the same event
# loop that handles the jobs).
GROUND_VALUES = (
    "--set", f"maxConcurrentJobs={GROUND_MAX_CONCURRENT_JOBS}",
    "--set", "resources.requests.cpu=200m",
    "--set", "worker.resources.requests.cpu=10m",
    "--set", "worker.resources.requests.memory=64Mi",
    "--set", "livenessProbe.timeoutSeconds=20",
    "--set", "livenessProbe.failureThreshold=6",
)


class KubeCluster(Protocol):
    """What installing and running datamover needs of a cluster: the local ground's or an external one."""

    @property
    def admin_kubeconfig(self) -> Path: ...

    @property
    def workdir(self) -> Path: ...

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]: ...

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, *,
                                   bound_pod: tuple[str, str] | None = None) -> Path: ...


def helm(cluster: KubeCluster, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """The real helm against `cluster`, run from the repository (so `charts/datamover` is the chart's path)."""
    home = cluster.workdir / "helm"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(cluster.admin_kubeconfig)}
    result = subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, env=env, timeout=timeout,
                            check=False, cwd=REPO)
    if result.returncode != 0:
        raise GroundError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def ground_values() -> tuple[str, ...]:
    """GROUND_VALUES, plus the image to run under `make e2e` (one the user loaded into their cluster)."""
    loaded = os.environ.get(E2E_WORKER_IMAGE)
    if not loaded:
        return GROUND_VALUES  # the chart's default image: the one `make image` built and the node imported
    repository, _, tag = loaded.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = loaded, "latest"
    return (*GROUND_VALUES, "--set", f"image.repository={repository}", "--set", f"image.tag={tag}")


def operator_healthy(pod: dict[str, Any], node: Node | None) -> bool:
    """An operator pod's container is ready and, where the ground's pod network is ours, kopf answers /healthz."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses or not statuses[0].get("ready"):
        return False
    if node is None:
        return True  # a user's cluster: its pod network is not ours to reach
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "health")
    try:
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


@dataclass
class OperatorRelease:
    """One release of the chart, and its operator pod as kubectl (and, on the ground, the node) sees it."""

    cluster: KubeCluster
    node: Node | None  # the ground's node; None on a user's cluster (no reaching into its container runtime)
    release: str = RELEASE
    namespace: str = OPERATOR_NAMESPACE

    @property
    def selector(self) -> str:
        return f"{OPERATOR_SELECTOR},app.kubernetes.io/instance={self.release}"

    @property
    def deployment(self) -> str:
        """deployment/<name>: the chart names it after the release (datamover-operator for release `datamover`)."""
        names = self.cluster.kubectl("get", "deployments", "-n", self.namespace, "-l", self.selector,
                                     "-o", "name").stdout.split()
        if len(names) != 1:
            raise GroundError(f"{self.release}: {names or 'no'} operator Deployment(s) in {self.namespace}")
        return names[0]

    def install(self, *values: str, replicas: int = 1) -> list[dict[str, Any]]:
        """`helm install --wait` with `values`; returns the `replicas` operator pods once each answers /healthz."""
        helm(self.cluster, "install", self.release, CHART, "--namespace", self.namespace, "--create-namespace",
             *values, "--wait", "--timeout", f"{READY_TIMEOUT:.0f}s")
        return self.wait_ready(replicas=replicas)

    def upgrade(self, *values: str) -> None:
        """`helm upgrade --reuse-values` with `values` (e.g. --set maxConcurrentJobs=1), and wait for the rollout."""
        helm(self.cluster, "upgrade", self.release, CHART, "--namespace", self.namespace, "--reuse-values", *values,
             "--wait", "--timeout", f"{READY_TIMEOUT:.0f}s")
        self.wait_ready()

    def uninstall(self) -> None:
        helm(self.cluster, "uninstall", self.release, "--namespace", self.namespace, "--wait", "--timeout", "2m")

    def pods(self) -> list[dict[str, Any]]:
        """The release's operator pods that are not on their way out."""
        return [p for p in self._all_pods() if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict[str, Any]:
        pods = self.pods()
        if len(pods) != 1:
            raise GroundError(f"{self.release}: {len(pods)} operator pods, expected one")
        return pods[0]

    def wait_ready(self, *, replicas: int = 1, timeout: float = READY_TIMEOUT) -> list[dict[str, Any]]:
        """The Deployment rolled out and `replicas` pods running whose kopf answers its liveness endpoint.

        Ready alone is not enough: the chart has no readiness probe, so Ready means the container started, before
        kopf has its watches (the liveness endpoint answers once kopf runs).
        """
        self.cluster.kubectl("rollout", "status", "-n", self.namespace, self.deployment,
                             f"--timeout={timeout:.0f}s", timeout=timeout + 30)
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods()
            if len(pods) == replicas and all(operator_healthy(p, self.node) for p in pods):
                return pods
            if time.monotonic() > deadline:
                raise GroundError(f"{self.release}: not {replicas} healthy operator pod(s) after {timeout:.0f}s: "
                                  f"{[self._summary(p) for p in pods]}\n{self.logs()}")
            if self.node is not None:
                self.node.check_alive()
            time.sleep(0.3)

    @staticmethod
    def _summary(pod: dict[str, Any]) -> str:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return f"{pod['metadata']['name']} {pod.get('status', {}).get('phase')} {statuses[0].get('state')}"

    def kill(self) -> None:
        """The operator dies with no chance to clean up, and comes back as the chart makes it come back.

        On the ground: SIGKILL to its container's processes through the node's containerd, and the kubelet
        restarts the container (the Deployment's restartPolicy Always). On a user's cluster: the pod is deleted
        with no grace period, and the Deployment starts another.
        """
        pod = self.pod()
        if self.node is None:
            self.cluster.kubectl("delete", "pod", "-n", self.namespace, pod["metadata"]["name"], "--grace-period=0",
                                 "--force", "--wait=false")
            deadline = time.monotonic() + READY_TIMEOUT
            while any(p["metadata"]["uid"] == pod["metadata"]["uid"] for p in self.pods()):
                if time.monotonic() > deadline:
                    raise GroundError(f"operator pod {pod['metadata']['name']} still there after its deletion")
                time.sleep(0.2)
            self.wait_ready()
            return
        (status,) = pod["status"]["containerStatuses"]
        self.node.signal_container(status["containerID"], "SIGKILL")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            (now,) = self.pod()["status"]["containerStatuses"]
            if now["restartCount"] > status["restartCount"]:
                break
            if time.monotonic() > deadline:
                raise GroundError(f"the kubelet did not restart the operator after SIGKILL: {now}")
            time.sleep(0.2)
        self.wait_ready()

    def set_env(self, **env: str | None) -> None:
        """`kubectl set env` on the Deployment (None removes a variable), and wait for the rollout: a restart."""
        changes = [f"{k}={v}" if v is not None else f"{k}-" for k, v in env.items()]
        self.cluster.kubectl("set", "env", "-n", self.namespace, self.deployment, *changes)
        self.wait_ready()

    def scale(self, replicas: int) -> None:
        """`kubectl scale` the Deployment and wait until exactly that many operators run."""
        self.cluster.kubectl("scale", "-n", self.namespace, self.deployment, f"--replicas={replicas}")
        if replicas:
            self.wait_ready(replicas=replicas)
            return
        deadline = time.monotonic() + READY_TIMEOUT
        while self._all_pods():
            if time.monotonic() > deadline:
                raise GroundError(f"{self.release}: operator pods still there after scaling to 0")
            time.sleep(0.2)

    def _all_pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", self.selector, "-o", "json")
        return list(json.loads(out.stdout)["items"])

    def logs(self, tail: int = 200) -> str:
        """`kubectl logs` of every operator pod of the release (what a user reads)."""
        parts = []
        for pod in self._all_pods():
            name = pod["metadata"]["name"]
            result = self.cluster.kubectl("logs", "-n", self.namespace, name, f"--tail={tail}", check=False)
            parts.append(f"-- {name} --\n{result.stdout}{result.stderr}")
        return "\n".join(parts) or "(no operator pod)"


@dataclass
class Stack:
    """Everything `make demo` and the benches need, up and ready."""

    control_plane: ControlPlane
    node: Node
    cloud_a: S3Server
    cloud_b: S3Server
    operator: OperatorRelease


@contextlib.contextmanager
def local_stack(workdir: Path) -> Iterator[Stack]:
    """Control plane, the real node with the image imported, two MinIO servers on the node's bridge address (the
    only address of this machine the pods reach), and the chart installed with helm."""
    with contextlib.ExitStack() as stack:
        control_plane = stack.enter_context(start_control_plane(workdir / "controlplane"))
        node = stack.enter_context(start_node(control_plane, workdir / "node", images=[image.archive()]))
        cloud_a = stack.enter_context(start_minio(workdir, "cloud-a", "cloud-a-admin", secrets.token_hex(16),
                                                  host=node.ip))
        cloud_b = stack.enter_context(start_minio(workdir, "cloud-b", "cloud-b-admin", secrets.token_hex(16),
                                                  host=node.ip))
        operator = OperatorRelease(control_plane, node)
        operator.install(*GROUND_VALUES)
        yield Stack(control_plane, node, cloud_a, cloud_b, operator)
