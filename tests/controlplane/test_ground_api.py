"""Proofs that the control-plane ground is the real thing: schema validation, RBAC, TokenRequest and controllers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.ground.controlplane import ControlPlane
from tests.ground.plugin_controlplane import Kubectl
from tests.ground.procs import GroundError

pytestmark = pytest.mark.ground

# The pods below only need to exist: a selector no node matches keeps them off the session's node, whose kubelet
# would otherwise try to pull their made-up image from a registry.
NO_NODE = {"datamover.test/no-such-node": "true"}

# A throwaway CRD, not the product's: only the API server's own validation can reject the bad widgets below.
WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.ground.test.io
spec:
  group: ground.test.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size, color]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string}
"""


def widget(name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump({"apiVersion": "ground.test.io/v1", "kind": "Widget", "metadata": {"name": name},
                           "spec": spec})


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:.0f}s: {what}")
        time.sleep(0.1)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    name = f"ground-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="module")
def widget_crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/widgets.ground.test.io")


def test_api_server_validates_custom_resources_against_the_schema(
    kubectl: Kubectl, widget_crd: None, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=widget("good", {"size": 3, "color": "red"}))
    got = json.loads(kubectl("get", "widget", "good", "-n", namespace, "-o", "json").stdout)
    assert got["spec"] == {"size": 3, "color": "red"}

    wrong_type = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                         input=widget("wrong-type", {"size": "big", "color": "red"}))
    assert wrong_type.returncode != 0
    assert "spec.size" in wrong_type.stderr
    assert 'must be of type integer: "string"' in wrong_type.stderr

    missing = kubectl("apply", "-n", namespace, "-f", "-", check=False, input=widget("missing", {"size": 2}))
    assert missing.returncode != 0
    assert "spec.color: Required value" in missing.stderr

    too_small = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                        input=widget("too-small", {"size": 0, "color": "red"}))
    assert too_small.returncode != 0
    assert "should be greater than or equal to 1" in too_small.stderr

    names = kubectl("get", "widgets", "-n", namespace, "-o", "name").stdout.split()
    assert names == ["widget.ground.test.io/good"]


def test_service_account_token_is_subject_to_rbac(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "configmap", "data", "-n", namespace, "--from-literal=k=v")
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader", tmp_path / "reader.kubeconfig")

    denied = kubectl("get", "configmap", "data", "-n", namespace, "-o", "name", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f'User "system:serviceaccount:{namespace}:reader" cannot get resource "configmaps"' in denied.stderr

    kubectl("create", "role", "read-configmaps", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    kubectl("create", "rolebinding", "reader-reads", "-n", namespace, "--role=read-configmaps",
            f"--serviceaccount={namespace}:reader")

    def allowed() -> bool:
        result = kubectl("get", "configmap", "data", "-n", namespace, "-o", "name", kubeconfig=kubeconfig,
                         check=False)
        return result.returncode == 0 and result.stdout.strip() == "configmap/data"

    eventually(allowed, "the reader can get the configmap once the RoleBinding exists", timeout=10)
    # The grant is exactly the Role: writing is still forbidden.
    write = kubectl("delete", "configmap", "data", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert write.returncode != 0
    assert "Forbidden" in write.stderr


def test_pod_bound_token_dies_with_its_pod(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "worker", "-n", namespace)
    kubectl("create", "clusterrolebinding", f"{namespace}-worker-view", "--clusterrole=view",
            f"--serviceaccount={namespace}:worker")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
           "spec": {"serviceAccountName": "worker", "nodeSelector": NO_NODE,
                    "containers": [{"name": "c", "image": "none:1"}]}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pod))
    uid = kubectl("get", "pod", "holder", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout.strip()

    with pytest.raises(GroundError, match=r"does not match|not found|uid"):
        control_plane.request_token(namespace, "worker", bound_pod=("holder", str(uuid.uuid4())))

    kubeconfig = control_plane.service_account_kubeconfig(
        namespace, "worker", tmp_path / "worker.kubeconfig", bound_pod=("holder", uid)
    )
    whoami = kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    extra = json.loads(whoami.stdout)["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["holder"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [uid]

    kubectl("delete", "pod", "holder", "-n", namespace, "--wait=true")

    def rejected() -> bool:
        result = kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
        return result.returncode != 0 and "Unauthorized" in result.stderr

    eventually(rejected, "the pod-bound token is rejected after its pod is deleted", timeout=15)


def test_controller_manager_runs_the_namespace_serviceaccount_job_and_gc_controllers(
    kubectl: Kubectl, namespace: str
) -> None:
    # serviceaccount and root-ca-cert-publisher controllers fill every new namespace.
    eventually(lambda: kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
               "the default ServiceAccount in a new namespace")
    eventually(lambda: kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace, check=False).returncode == 0,
               "the kube-root-ca.crt ConfigMap in a new namespace")

    # The Job controller creates the Job's pod (no node takes it: see NO_NODE); the garbage collector deletes that
    # pod when the Job goes.
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "one"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "nodeSelector": NO_NODE,
                                          "containers": [{"name": "c", "image": "none:1"}]}}}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    def job_pods() -> list[str]:
        out = kubectl("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=one", "-o", "name").stdout
        return out.split()

    eventually(lambda: len(job_pods()) == 1, "the Job controller creating one pod")
    kubectl("delete", "job", "one", "-n", namespace, "--cascade=background", "--wait=false")
    eventually(lambda: job_pods() == [], "the garbage collector deleting the Job's pod")

    # The namespace controller empties and removes a deleted namespace (finalizer `kubernetes`).
    kubectl("delete", "namespace", namespace, "--wait=false")
    eventually(lambda: kubectl("get", "namespace", namespace, check=False).returncode != 0,
               "the namespace controller finishing the deletion", timeout=60)
