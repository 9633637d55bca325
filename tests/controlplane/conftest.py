"""Fixtures of the control-plane tier: the real node, two MinIO servers its pods reach, and datamover installed on
it by its chart (`helm install`), as users install it. One of each for the whole tier (package scope: the node
stops when the tier ends, not at the end of the session).

Under `make e2e` (tests/ground/external.py) the cluster is the user's own: no node of ours, MinIO on
DATAMOVER_E2E_S3_HOST, and the chart installed there (and uninstalled after) with the image the user loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamover import kubeapi
from tests.ground import image
from tests.ground.controlplane import ControlPlane
from tests.ground.external import e2e_kubeconfig, s3_host
from tests.ground.node import Node, start_node
from tests.ground.plugin_s3 import cloud_server
from tests.ground.s3 import S3Server
from tests.ground.stack import OPERATOR_SELECTOR, KubeCluster, OperatorRelease, ground_values

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]
LOG_TAIL_LINES = 100  # per pod, in a failed test's report: enough for a traceback


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_node_host.py first among this tier's tests: it starts and stops a node of its own and compares the host
    before and after, which it can do only before the session's node starts (one node per host)."""
    host = [item for item in items if "test_node_host.py" in item.nodeid]
    rest = [item for item in items if "test_node_host.py" not in item.nodeid]
    at = next((i for i, item in enumerate(rest) if item.nodeid.startswith("tests/controlplane/")), len(rest))
    items[:] = rest[:at] + host + rest[at:]


@pytest.fixture(scope="package")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node | None]:
    """The session's real node (kubelet, containerd, runc, CNI) with the datamover image imported; None under
    `make e2e`, whose cluster has nodes of its own."""
    if e2e_kubeconfig() is not None:
        yield None
        return
    with start_node(control_plane, tmp_path_factory.mktemp("node"), images=[image.archive()]) as started:
        yield started


@pytest.fixture(scope="package")
def cloud_a(node: Node | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Cloud A on the node's bridge address: the only address of this machine the pods reach."""
    yield from cloud_server(tmp_path_factory, "cloud-a-node", host=node.ip if node else s3_host())


@pytest.fixture(scope="package")
def cloud_b(node: Node | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Cloud B, beside cloud A, with credentials of its own."""
    yield from cloud_server(tmp_path_factory, "cloud-b-node", host=node.ip if node else s3_host())


@pytest.fixture(scope="package")
def operator(control_plane: KubeCluster, node: Node | None) -> Iterator[OperatorRelease]:
    """The chart installed once for the session (helm install --wait), its operator healthy."""
    release = OperatorRelease(control_plane, node)
    release.install(*ground_values())
    yield release
    if node is None:
        release.uninstall()  # a user's cluster is left as it was found; the ground's goes with its control plane


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test's report gets the operator's log (`kubectl logs`); `cluster` adds its pods' logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    if "operator" in request.fixturenames:
        release: OperatorRelease = request.getfixturevalue("operator")
        print(f"---- datamover-operator log (tail) ----\n{release.logs(LOG_TAIL_LINES * 2)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def admin_api(control_plane: Any) -> kubeapi.Client:
    return kubeapi.Client(kubeapi.load_config(str(control_plane.admin_kubeconfig)))


@dataclass
class Cluster:
    """A test's view of datamover on the real ground: a fresh namespace with credentials for both clouds."""

    namespace: str
    kubectl: Kubectl
    api: kubeapi.Client

    def apply(self, manifest: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get(kubeapi.MIGRATION_JOBS, self.namespace, name)

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
        items = self.api.list(kubeapi.EVENTS, self.namespace, field_selector=f"involvedObject.name={name}")["items"]
        return [f"{e.get('type')} {e.get('reason')}: {e.get('message')}" for e in items]

    def wait_event(self, name: str, predicate: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        """The first Event on `name` (as "<type> <reason>: <message>") that satisfies `predicate`, waiting for kopf
        to post it: Events are posted asynchronously, after the status patch a phase wait has already seen."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(name)
            for event in events:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"MigrationJob {name}: no Event {what} after {timeout}s; Events: {events}")
            time.sleep(0.1)

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.api.list(kubeapi.JOBS, self.namespace)["items"])

    def pods(self) -> list[dict[str, Any]]:
        return list(self.api.list(kubeapi.PODS, self.namespace)["items"])


def secret(name: str, access_key: str, secret_key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": {"accessKeyId": access_key, "secretAccessKey": secret_key}}


@pytest.fixture
def cluster(kubectl: Kubectl, admin_api: kubeapi.Client, operator: OperatorRelease, cloud_a: Any,
            cloud_b: Any, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    namespace = f"mj-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    view = Cluster(namespace, kubectl, admin_api)
    view.apply(secret("cloud-a", cloud_a.access_key, cloud_a.secret_key))
    view.apply(secret("cloud-b", cloud_b.access_key, cloud_b.secret_key))
    yield view
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # the pods' own words, before their namespace goes
        for pod in view.pods()[-20:]:
            name = pod["metadata"]["name"]
            logs = kubectl("logs", "-n", namespace, name, "--all-containers", f"--tail={LOG_TAIL_LINES}", check=False)
            phase = (pod.get("status") or {}).get("phase")
            print(f"---- pod {namespace}/{name} ({phase}) ----\n{logs.stdout}{logs.stderr}")
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


@pytest.fixture
def plans_namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace on a cluster with datamover's CRDs applied from crds/ (no node, no operator needed)."""
    crds = Path(__file__).resolve().parents[2] / "crds"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    kubectl("wait", "--for=condition=Established", "crd/migrationplans.datamover.io", "--timeout=60s")
    name = f"plans-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def sole_local_operator(kubectl: Kubectl) -> Iterator[None]:
    """Every chart-installed operator on the cluster (the session's serves all namespaces) steps aside while a test's
    own operator serves its namespace: two operators would race to act on the same objects (a plan's run is made by
    whichever sees it due first), and such a test judges its own operator by its log. Scaled back after."""
    listed = json.loads(kubectl("get", "deployments", "-A", "-l", OPERATOR_SELECTOR, "-o", "json").stdout)["items"]
    running = [(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"].get("replicas", 1)) for d in listed
               if d["spec"].get("replicas", 1)]
    for namespace, name, _ in running:
        kubectl("scale", "-n", namespace, f"deployment/{name}", "--replicas=0")
    for namespace, _, _ in running:
        kubectl("wait", "-n", namespace, "--for=delete", "pod", "-l", OPERATOR_SELECTOR, "--timeout=120s")
    try:
        yield
    finally:
        for namespace, name, replicas in running:
            kubectl("scale", "-n", namespace, f"deployment/{name}", f"--replicas={replicas}")
        for namespace, name, _ in running:
            kubectl("rollout", "status", "-n", namespace, f"deployment/{name}", "--timeout=300s", timeout=320)


def local_process(control_plane: Any, module: str, *args: str, output: int | None = subprocess.PIPE) -> (
        subprocess.Popen[str]):
    """`python -m <module> <args>` of this checkout on this machine, as the cluster's admin (e.g. the operator, or
    datamover-api). When the session's ground has a real node, the workers of the operator's runs do run there: a
    test that needs a run to stay unfinished suspends it."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "KUBECONFIG": str(control_plane.admin_kubeconfig), "PYTHONPATH": str(repo / "operator")}
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=output,
                            stderr=subprocess.STDOUT if output is not None else None, text=True)
