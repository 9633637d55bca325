"""The install artefacts against a real API server: the rendered chart is accepted (server-side dry run), validates
with kubeconform -strict against schemas taken from that server, and the operator's and workers' pods pass the real
Pod Security "restricted" admission, which really rejects a pod that lacks those settings."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamover.api import MigrationSpec
from datamover.controller import resources
from tests.ground.binaries import binary
from tests.ground.plugin_controlplane import Kubectl
from tests.ground.procs import GroundError
from tests.ground.stack import OperatorRelease, ground_values
from tools import render_manifests
from tools.kubeconform import schemas

pytestmark = pytest.mark.ground

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install.yaml"
SAMPLES = REPO / "manifests" / "samples"

# Chart renders checked besides the default install: HA (kopf peering) and namespaced mode, with and without HA.
VARIANTS = {
    "replicas-2": ["--set", "replicaCount=2"],
    "namespaced": ["--set", "namespaces={team-a,team-b}"],
    "namespaced-replicas-2": ["--set", "namespaces={team-a}", "--set", "replicaCount=2"],
}


def docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def helm() -> Path:
    return binary("helm")


def render(*values: str) -> str:
    return render_manifests.helm_template("--include-crds", *values, helm=helm())


def namespaced_mode_namespaces(objects: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["namespace"] for o in objects
            if o["kind"] in ("Role", "RoleBinding", "KopfPeering")}


@pytest.fixture(scope="module")
def operator_namespace(kubectl: Kubectl) -> str:
    """The install's own Namespace object, applied for real: a dry run cannot create what the rest goes into."""
    namespace = one(docs(INSTALL.read_text()), "Namespace")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    return str(namespace["metadata"]["name"])


def test_install_yaml_applies_with_server_dry_run(kubectl: Kubectl, operator_namespace: str) -> None:
    result = kubectl("apply", "--dry-run=server", "-f", str(INSTALL))
    for line in ("customresourcedefinition.apiextensions.k8s.io/migrationjobs.datamover.io",
                 "serviceaccount/datamover-operator", "clusterrole.rbac.authorization.k8s.io/datamover-operator",
                 "clusterrolebinding.rbac.authorization.k8s.io/datamover-operator",
                 "deployment.apps/datamover-operator"):
        assert line in result.stdout, result.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_variants_apply_with_server_dry_run(kubectl: Kubectl, operator_namespace: str, variant: str) -> None:
    objects = docs(render(*VARIANTS[variant]))
    for namespace in sorted(namespaced_mode_namespaces(objects)):
        kubectl("create", "namespace", namespace, check=False)  # may exist from another variant
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    # Custom resources (the kopf peering object) need their CRD for real: a dry run creates nothing.
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds))
    for crd in crds:
        kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd['metadata']['name']}")
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects))
    assert "deployment.apps/datamover-operator created (server dry run)" in result.stdout \
        or "deployment.apps/datamover-operator configured (server dry run)" in result.stdout, result.stdout


# -- kubeconform with schemas from this API server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_dir(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas")

    def get_raw(path: str) -> str:
        return kubectl("get", "--raw", path).stdout

    built_in = schemas.from_cluster(get_raw)
    assert ("apps", "v1", "Deployment") in built_in and ("", "v1", "Pod") in built_in
    schemas.write(built_in, directory)
    # Custom kinds from the CRD files themselves, so the check does not depend on which CRDs are installed.
    crd_files = [INSTALL]
    for variant, values in VARIANTS.items():
        path = directory / f"render-{variant}.yaml"
        path.write_text(render(*values))
        crd_files.append(path)
    for crd in schemas.crds_in(crd_files):
        schemas.write(schemas.from_crd(crd), directory)
    return directory


def kubeconform(schema_dir: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("kubeconform")), "-strict", "-summary", "-schema-location", schemas.schema_location(schema_dir),
         "-"],
        input=text, capture_output=True, text=True, check=False, timeout=120,
    )


@pytest.mark.parametrize("what", ["install.yaml", "samples", *sorted(VARIANTS)])
def test_kubeconform_strict(schema_dir: Path, what: str) -> None:
    if what == "install.yaml":
        text = INSTALL.read_text()
    elif what == "samples":
        text = "\n---\n".join(p.read_text() for p in sorted(SAMPLES.glob("*.yaml")))
    else:
        text = (schema_dir / f"render-{what}.yaml").read_text()
    count = len(docs(text))
    result = kubeconform(schema_dir, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_kubeconform_strict_rejects_a_misspelt_built_in_field(schema_dir: Path) -> None:
    objects = docs(INSTALL.read_text())
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    result = kubeconform(schema_dir, yaml.safe_dump(deployment))
    assert result.returncode == 1 and "runAsNonroot" in result.stdout, result.stdout


# -- Pod Security "restricted", enforced by the real admission plugin ---------------------------------------------


@pytest.fixture
def restricted_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"psa-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def create_pod_dry_run(kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any],
                       ) -> subprocess.CompletedProcess[str]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod), check=False)


def service_account(kubectl: Kubectl, namespace: str, name: str) -> None:
    """The pod's ServiceAccount must exist (the ServiceAccount admission plugin checks); a plain one will do."""
    manifest = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def worker_pod_spec(namespace: str) -> dict[str, Any]:
    """The pod template the operator builds for the copy sample, with the chart's default worker settings."""
    [sample] = docs((SAMPLES / "migrationjob-copy.yaml").read_text())
    owner = {**sample, "metadata": {**sample["metadata"], "namespace": namespace, "uid": str(uuid.uuid4())}}
    deployment = one(docs(INSTALL.read_text()), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = resources.WorkerSettings.from_env({k: v for k, v in env.items() if v is not None})
    job = resources.job(owner, MigrationSpec.from_spec(sample["spec"]), settings)
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def test_worker_pod_passes_restricted(kubectl: Kubectl, restricted_namespace: str) -> None:
    spec = worker_pod_spec(restricted_namespace)
    service_account(kubectl, restricted_namespace, spec["serviceAccountName"])
    result = create_pod_dry_run(kubectl, restricted_namespace, "worker", spec)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"


def test_operator_pod_passes_restricted(kubectl: Kubectl, restricted_namespace: str) -> None:
    spec = one(docs(INSTALL.read_text()), "Deployment")["spec"]["template"]["spec"]
    service_account(kubectl, restricted_namespace, spec["serviceAccountName"])
    result = create_pod_dry_run(kubectl, restricted_namespace, "operator", spec)
    assert result.returncode == 0, result.stderr


def test_restricted_admission_is_real(kubectl: Kubectl, restricted_namespace: str) -> None:
    plain = {"containers": [{"name": "app", "image": "example/app:1"}]}
    result = create_pod_dry_run(kubectl, restricted_namespace, "plain", plain)
    assert result.returncode != 0 and 'violates PodSecurity "restricted:latest"' in result.stderr, result.stderr
    # The worker's own template fails too once its security settings are gone: the pass above is earned.
    spec = worker_pod_spec(restricted_namespace)
    service_account(kubectl, restricted_namespace, spec["serviceAccountName"])
    del spec["securityContext"]
    del spec["containers"][0]["securityContext"]
    result = create_pod_dry_run(kubectl, restricted_namespace, "worker-unsafe", spec)
    assert result.returncode != 0 and "allowPrivilegeEscalation != false" in result.stderr, result.stderr


# -- the chart's RBAC in practice: the chart's operator pods run as its ServiceAccount --------------------------


def can_i(kubectl: Kubectl, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else []
    result = kubectl("auth", "can-i", verb, resource, *where, f"--as={account}", check=False)
    return result.stdout.strip() == "yes"


# One operator log record: "<asctime> level=<LEVEL> logger=<name> <message>" (controller/main.py's format).
LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=(?P<level>\w+) logger=(?P<logger>\S+) (?P<message>.*)$")


def log_records(log: str) -> list[dict[str, str]]:
    """The operator log as records (level, logger, message); continuation lines (tracebacks) join their record."""
    records: list[dict[str, str]] = []
    for line in log.splitlines():
        match = LOG_RECORD.match(line)
        if match:
            records.append(match.groupdict())
        elif records:
            records[-1]["message"] += "\n" + line
    return records


def permission_complaint(record: dict[str, str]) -> bool:
    """kopf's or the API's word for "not allowed", looked for in the message only: the timestamp's
    milliseconds can read 403."""
    message = record["message"]
    return ("Forbidden" in message or "Not enough permissions" in message
            or re.search(r"\b403\b", message) is not None)


@pytest.mark.parametrize("replicas", [1, 2])
def test_operator_runs_namespaced_with_the_charts_rbac(kubectl: Kubectl, operator: OperatorRelease,
                                                       replicas: int) -> None:
    """Namespaced mode, installed with `helm install` beside the session's release: the operator pods start with only
    their Roles (no permission warnings in `kubectl logs`), may act in the namespaces they serve and nowhere else,
    and with replicas > 1 register in each namespace's KopfPeering."""
    suffix = uuid.uuid4().hex[:6]
    release, namespace = f"ns{suffix}", f"dm-{suffix}"
    served, other = [f"team-a-{suffix}", f"team-b-{suffix}"], f"other-{suffix}"
    values = ["--set", f"namespaces={{{','.join(served)}}}", "--set", f"replicaCount={replicas}"]
    for name in (*served, other):
        kubectl("create", "namespace", name)
    if replicas > 1:
        # kopf's KopfPeering CRD exists already, as when another kopf operator installed it (the variants' dry run
        # above applies it with kubectl): helm refuses to adopt it, so the chart is told, as docs/install.md says.
        crds = [o for o in docs(render(*VARIANTS["namespaced-replicas-2"])) if o["kind"] == "CustomResourceDefinition"
                and o["spec"]["group"] == "kopf.dev"]
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds))
        values += ["--set", "peering.installCRDs=false"]
    namespaced = OperatorRelease(operator.cluster, operator.node, release=release, namespace=namespace)
    try:
        pods = namespaced.install(*ground_values(), *values, replicas=replicas)
        account_name = pods[0]["spec"]["serviceAccountName"]
        account = f"system:serviceaccount:{namespace}:{account_name}"
        for verb, resource in [("watch", "migrationjobs.datamover.io"), ("patch", "migrationjobs.datamover.io/status"),
                               ("create", "jobs.batch"), ("create", "roles.rbac.authorization.k8s.io"),
                               ("get", "secrets"), ("create", "events")]:
            assert all(can_i(kubectl, account, verb, resource, ns) for ns in served), (verb, resource)
            assert not can_i(kubectl, account, verb, resource, other), (verb, resource, other)
        assert not can_i(kubectl, account, "get", "secrets", None), "no cluster-wide Secret access"

        env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["DATAMOVER_NAMESPACES"] == ",".join(served)
        if replicas > 1:
            for ns in served:
                for pod in pods:  # kopf's peering id is the pod's name (POD_ID)
                    _wait_for_peer(kubectl, ns, pod["metadata"]["name"])
        else:
            time.sleep(3)  # let kopf list and watch everything it serves; nothing to wait for says it has
        for pod in pods:
            log = kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
            complaints = [record for record in log_records(log) if permission_complaint(record)]
            assert complaints == [], log
    finally:
        with contextlib.suppress(GroundError):
            namespaced.uninstall()
        for name in (namespace, *served, other):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def _wait_for_peer(kubectl: Kubectl, namespace: str, peer: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = kubectl("get", "kopfpeering", "datamover", "-n", namespace, "-o", "json", check=False)
        peering = json.loads(result.stdout) if result.returncode == 0 else {}
        if peer in (peering.get("status") or {}):
            return
        assert time.monotonic() < deadline, f"{peer} not in the KopfPeering of {namespace}: {peering}"
        time.sleep(0.2)
