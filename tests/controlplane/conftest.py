"""Fixtures that install datamover on the real control plane and run the operator as its own ServiceAccount."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import yaml
from kubernetes import client, config

from tests.ground.stack import KubeCluster, OperatorProcess, install_datamover, run_operator

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def operator(control_plane: KubeCluster, node_agent: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_datamover(control_plane)
    with run_operator(control_plane, tmp_path_factory.mktemp("operator")) as proc:
        yield proc


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
    return cast(client.ApiClient, config.new_client_from_config(  # type: ignore[no-untyped-call]
        str(control_plane.admin_kubeconfig)))


@dataclass
class Cluster:
    """A test's view of datamover on the real ground: a fresh namespace with credentials for both clouds."""

    namespace: str
    kubectl: Kubectl
    api: client.ApiClient

    def apply(self, manifest: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "datamover.io", "v1alpha1", self.namespace, "migrationjobs", name))

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
