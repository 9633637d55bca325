"""Fixtures that install datamover on the real control plane and run the operator as its own ServiceAccount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.ground.procs import free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "datamover.io_migrationjobs.yaml"
RBAC = REPO / "manifests" / "rbac.yaml"
OPERATOR_NAMESPACE = "datamover-system"
OPERATOR_ACCOUNT = "datamover-operator"

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


class OperatorProcess:
    """datamover-operator as a local process holding only its ServiceAccount's token (the chart's RBAC)."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DATAMOVER_WORKER_IMAGE": "datamover:test",
            "DATAMOVER_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.port}/healthz",
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "datamover-operator")], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"datamover-operator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"datamover-operator did not become healthy in 60 s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
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
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def datamover_installed(control_plane: Any, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/migrationjobs.datamover.io")
    kubectl("apply", "-f", str(RBAC))


@pytest.fixture(scope="session")
def operator(control_plane: Any, datamover_installed: None, node_agent: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT,
                                                          workdir / "kubeconfig")
    proc = OperatorProcess(kubeconfig, workdir / "operator.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "operator" in request.fixturenames:
        proc: OperatorProcess = request.getfixturevalue("operator")
        print(f"---- datamover-operator log (tail) ----\n{proc.log_tail(200)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def admin_api(control_plane: Any) -> client.ApiClient:
    return config.new_client_from_config(str(control_plane.admin_kubeconfig))


@dataclass
class Cluster:
    """A test's view of datamover on the real ground: a fresh namespace with credentials for both clouds."""

    namespace: str
    kubectl: Kubectl
    api: client.ApiClient

    def apply(self, manifest: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "datamover.io", "v1alpha1", self.namespace, "migrationjobs", name)
        return obj

    def wait_phase(self, name: str, phases: set[str], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(name)
            if (obj.get("status") or {}).get("phase") in phases:
                return obj
            time.sleep(0.1)
        raise AssertionError(f"MigrationJob {name} not in {phases} after {timeout}s: "
                             f"{json.dumps(obj.get('status'), indent=1)[:3000]}")

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(name)
            if predicate(obj):
                return obj
            time.sleep(0.05)
        raise AssertionError(f"MigrationJob {name}: {what} not seen after {timeout}s: "
                             f"{json.dumps(obj.get('status'), indent=1)[:3000]}")

    def events(self, name: str) -> list[str]:
        items = client.CoreV1Api(self.api).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items
        return [f"{e.type} {e.reason}: {e.message}" for e in items]

    def jobs(self) -> list[Any]:
        return list(client.BatchV1Api(self.api).list_namespaced_job(self.namespace).items)

    def pods(self) -> list[Any]:
        return list(client.CoreV1Api(self.api).list_namespaced_pod(self.namespace).items)


def secret(name: str, access_key: str, secret_key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": {"accessKeyId": access_key, "secretAccessKey": secret_key}}


@pytest.fixture
def cluster(kubectl: Kubectl, admin_api: client.ApiClient, operator: OperatorProcess, cloud_a: Any,
            cloud_b: Any) -> Iterator[Cluster]:
    namespace = f"mj-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    view = Cluster(namespace, kubectl, admin_api)
    view.apply(secret("cloud-a", cloud_a.access_key, cloud_a.secret_key))
    view.apply(secret("cloud-b", cloud_b.access_key, cloud_b.secret_key))
    yield view
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def migration_job(name: str, source: Any, source_bucket: str, destination: Any, destination_bucket: str,
                  **spec: Any) -> dict[str, Any]:
    """A MigrationJob from cloud A's bucket to cloud B's, as a user would write it."""
    return {
        "apiVersion": "datamover.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"bucket": source_bucket, "endpoint": source.endpoint, "region": source.region,
                       "addressingStyle": "path", "credentialsSecretRef": {"name": "cloud-a"}},
            "destination": {"bucket": destination_bucket, "endpoint": destination.endpoint,
                            "region": destination.region, "addressingStyle": "path",
                            "credentialsSecretRef": {"name": "cloud-b"}},
            **spec,
        },
    }
