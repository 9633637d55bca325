"""datamover installed on the local ground and its operator running as its own ServiceAccount.

Shared by the control-plane tests (as fixtures), `make demo` and bench/abort_latency.py, so all three run the
product the same way: CRD and RBAC applied from manifests/install.yaml (rendered from the chart), the operator
holding only the token of the chart's `datamover-operator` ServiceAccount, worker pods run by the node agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from tests.ground.controlplane import ControlPlane, start_control_plane
from tests.ground.external import E2E_WORKER_IMAGE
from tests.ground.nodeagent import NodeAgent, start_node_agent
from tests.ground.procs import GroundError, free_port, log_tail
from tests.ground.s3 import S3Server, start_minio

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install.yaml"
OPERATOR_NAMESPACE = "datamover-system"
OPERATOR_ACCOUNT = "datamover-operator"
READY_TIMEOUT = 60.0


class OperatorProcess:
    """datamover-operator as a local process holding only its ServiceAccount's token (the shipped RBAC)."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.process: subprocess.Popen[bytes] | None = None
        # Extra environment for the next start(), e.g. DATAMOVER_MAX_CONCURRENT_JOBS (what Helm values would set).
        self.env: dict[str, str] = {}

    def start(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DATAMOVER_WORKER_IMAGE": os.environ.get(E2E_WORKER_IMAGE, "datamover:local"),
            "DATAMOVER_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "datamover-operator")],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GroundError(f"datamover-operator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise GroundError(f"datamover-operator not healthy after {READY_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when its node dies."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


class KubeCluster(Protocol):
    """What installing and running datamover needs of a cluster: the local ground's or an external one."""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]: ...

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, *,
                                   bound_pod: tuple[str, str] | None = None) -> Path: ...


def install_datamover(control_plane: KubeCluster) -> None:
    """manifests/install.yaml (rendered from the chart) minus its Deployment, applied with kubectl as a user would.

    The CRD, the operator's Namespace, ServiceAccount and RBAC are exactly what users install; the operator itself
    runs here as a local process instead of the Deployment (no container runtime on the ground).
    """
    documents = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d and d["kind"] != "Deployment"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/migrationjobs.datamover.io")


@contextlib.contextmanager
def run_operator(control_plane: KubeCluster, workdir: Path) -> Iterator[OperatorProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT,
                                                          workdir / "operator.kubeconfig")
    operator = OperatorProcess(kubeconfig, workdir / "operator.log")
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()


@dataclass
class Stack:
    """Everything `make demo` and the abort bench need, up and ready."""

    control_plane: ControlPlane
    node_agent: NodeAgent
    cloud_a: S3Server
    cloud_b: S3Server
    operator: OperatorProcess


@contextlib.contextmanager
def local_stack(workdir: Path) -> Iterator[Stack]:
    with contextlib.ExitStack() as stack:
        control_plane = stack.enter_context(start_control_plane(workdir / "controlplane"))
        agent = stack.enter_context(start_node_agent(control_plane, workdir / "node-agent",
                                                     python_bin_dir=Path(sys.executable).parent))
        cloud_a = stack.enter_context(start_minio(workdir, "cloud-a", "cloud-a-admin", "cloud-a-secret-key"))
        cloud_b = stack.enter_context(start_minio(workdir, "cloud-b", "cloud-b-admin", "cloud-b-secret-key"))
        install_datamover(control_plane)
        operator = stack.enter_context(run_operator(control_plane, workdir / "operator"))
        yield Stack(control_plane, agent, cloud_a, cloud_b, operator)
