"""The chart, the plain install and the samples agree with the API and with each other; rendered with the real helm.

Needs the pinned helm and kubeconform (`make binaries`): without them these tests fail, saying so; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamover.api import MigrationSpec
from tools import render_manifests
from tools.kubeconform import schemas

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "datamover.io_migrationjobs.yaml"
CHART = REPO / "charts" / "datamover"
INSTALL = REPO / "manifests" / "install.yaml"
SAMPLES = REPO / "manifests" / "samples"
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


def pinned(name: str) -> Path:
    cache = Path(os.environ.get("DATAMOVER_CACHE") or Path.home() / ".cache" / "datamover")
    path = cache / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}; run `make binaries` (tools/build.sh builds the pinned {name})")
    return path


@pytest.fixture(scope="module")
def helm() -> Path:
    return pinned("helm")


def docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    return docs(render_manifests.helm_template(*args, helm=helm))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_chart_crd_is_a_byte_identical_copy() -> None:
    crds = sorted((REPO / "crds").iterdir())
    for crd in crds:
        copy = CHART / "crds" / crd.name
        assert copy.read_bytes() == crd.read_bytes(), f"{copy} drifted from {crd}: cp {crd} {copy}"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [c.name for c in crds]


def test_the_plan_template_is_validated_as_a_migrationjob_is() -> None:
    assert render_manifests.PLAN_CRD.read_text() == render_manifests.plan_crd(), (
        "the MigrationPlan CRD's jobTemplate.spec schema is stale: run `python tools/render_manifests.py`")
    template = render_manifests.template_schema()
    assert "abort" not in template["properties"]
    assert "oldSelf" not in yaml.safe_dump(template)  # a template may be edited: no update-only rules


def test_install_yaml_is_what_the_generator_renders_now(helm: Path) -> None:
    assert INSTALL.read_text() == render_manifests.render(helm), (
        "manifests/install.yaml is stale: run `python tools/render_manifests.py`")


def test_install_yaml_holds_the_crds_verbatim() -> None:
    for crd in (REPO / "crds").iterdir():
        assert crd.read_text() in INSTALL.read_text(), crd.name


@pytest.mark.parametrize("values", [[], ["--set", "replicaCount=2"], ["--set", "namespaces={team-a,team-b}"],
                                    ["--set", "replicaCount=3", "--set", "namespaces={team-a}"],
                                    ["--set", "metrics.serviceMonitor.enabled=true",
                                     "--set", "metrics.grafanaDashboard.enabled=true"],
                                    ["--set", "metrics.enabled=false"],
                                    ["--set", "api.enabled=true", "--set", "api.tls.secretName=api-tls"]])
def test_helm_lint(helm: Path, values: list[str]) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART), *values], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_rbac_binds_the_operator_account_cluster_wide(helm: Path) -> None:
    # install.yaml's RBAC is what the control-plane tests run the operator with, so these rules are the proven ones.
    rendered = render(helm)
    account = one(rendered, "ServiceAccount")["metadata"]
    assert (account["namespace"], account["name"]) == ("datamover-system", "datamover-operator")
    binding = one(rendered, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "datamover-operator",
                                    "namespace": "datamover-system"}]
    assert binding["roleRef"]["name"] == one(rendered, "ClusterRole")["metadata"]["name"]
    verbs = {v for rule in one(rendered, "ClusterRole")["rules"] for v in rule["verbs"]}
    assert "*" not in verbs and "escalate" not in verbs and "bind" not in verbs
    secrets = [r for r in one(rendered, "ClusterRole")["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert not [o for o in rendered if o["kind"] in ("Role", "RoleBinding", "CustomResourceDefinition")]


def test_install_yaml_namespace_enforces_restricted() -> None:
    namespace = one(docs(INSTALL.read_text()), "Namespace")
    assert namespace["metadata"]["name"] == render_manifests.NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_default_deployment(helm: Path) -> None:
    deployment = one(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == RESTRICTED_CONTAINER
    env = env_of(deployment)
    assert "DATAMOVER_PEERING" not in env and "DATAMOVER_NAMESPACES" not in env
    assert env["DATAMOVER_WORKER_IMAGE"] == container["image"]
    assert json.loads(env["DATAMOVER_WORKER_RESOURCES"])["limits"]["memory"] == "1Gi"
    # The probe asks the port and path kopf listens on.
    probe = container["livenessProbe"]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
    assert env["DATAMOVER_LIVENESS_ENDPOINT"] == f"http://0.0.0.0:{port}{probe['path']}"


def test_values_reach_the_operator(helm: Path) -> None:
    deployment = one(render(helm, "--set", "image.tag=1.2.3", "--set", "worker.image.repository=example/worker",
                            "--set", "worker.resources.limits.cpu=2"), "Deployment")
    env = env_of(deployment)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/datamover/datamover:1.2.3"
    assert env["DATAMOVER_WORKER_IMAGE"] == "example/worker:1.2.3"
    assert json.loads(env["DATAMOVER_WORKER_RESOURCES"])["limits"] == {"cpu": 2, "memory": "1Gi"}


def test_replicas_turn_on_kopf_peering(helm: Path) -> None:
    rendered = render(helm, "--set", "replicaCount=2")
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env_of(deployment)["DATAMOVER_PEERING"] == "datamover"
    assert one(rendered, "CustomResourceDefinition")["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    peering = one(rendered, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "datamover"
    rules = one(rendered, "ClusterRole")["rules"]
    assert {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"]} in rules
    # Everything else is the standalone role, unchanged.
    standalone = one(docs(INSTALL.read_text()), "ClusterRole")["rules"]
    assert [r for r in rules if r["apiGroups"] != ["kopf.dev"]] == standalone
    without_crds = render(helm, "--set", "replicaCount=2", "--set", "peering.installCRDs=false")
    assert not [o for o in without_crds if o["kind"] == "CustomResourceDefinition"]


def test_namespaced_mode(helm: Path) -> None:
    rendered = render(helm, "--set", "namespaces={team-a,team-b}")
    reference_rules = one(docs(INSTALL.read_text()), "ClusterRole")["rules"]
    cluster_scoped = [r for r in reference_rules
                      if r["resources"] in (["customresourcedefinitions"], ["namespaces"])]
    assert one(rendered, "ClusterRole")["rules"] == cluster_scoped
    roles = [o for o in rendered if o["kind"] == "Role"]
    bindings = [o for o in rendered if o["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == [r for r in reference_rules if r not in cluster_scoped]
    assert env_of(one(rendered, "Deployment"))["DATAMOVER_NAMESPACES"] == "team-a,team-b"


def test_namespaced_mode_with_peering(helm: Path) -> None:
    rendered = render(helm, "--set", "namespaces={team-a}", "--set", "replicaCount=2")
    assert one(rendered, "CustomResourceDefinition")["metadata"]["name"] == "kopfpeerings.kopf.dev"
    assert one(rendered, "KopfPeering")["metadata"]["namespace"] == "team-a"
    assert {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"]} in one(rendered, "Role")["rules"]
    assert all(r["apiGroups"] != ["kopf.dev"] for r in one(rendered, "ClusterRole")["rules"])


def sample_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in docs(path.read_text()):
            yield path.name, doc


def test_samples_cover_copy_move_abort_and_credentials() -> None:
    jobs = {name: doc["spec"] for name, doc in sample_objects() if doc["kind"] == "MigrationJob"}
    assert any(spec.get("remainSource", True) and not spec.get("abort") for spec in jobs.values())
    assert any(spec.get("remainSource") is False for spec in jobs.values())
    assert any(spec.get("abort") is True for spec in jobs.values())
    assert any(spec.get("mode") == "plan" for spec in jobs.values())
    secrets = [doc for _, doc in sample_objects() if doc["kind"] == "Secret"]
    referenced = {loc["credentialsSecretRef"]["name"] for spec in jobs.values()
                  for loc in (spec["source"], spec["destination"]) if "credentialsSecretRef" in loc}
    assert secrets and {s["metadata"]["name"] for s in secrets} <= referenced
    assert set(secrets[0]["stringData"]) == {"accessKeyId", "secretAccessKey"}


def test_samples_parse_as_the_operator_parses_them() -> None:
    parsed = [MigrationSpec.from_spec(doc["spec"]) for _, doc in sample_objects() if doc["kind"] == "MigrationJob"]
    assert {spec.remain_source for spec in parsed} == {True, False}
    assert any(spec.abort for spec in parsed)


def test_samples_pass_kubeconform_strict_against_the_crd(tmp_path: Path) -> None:
    """Built-in kinds need the API server's schemas: tests/controlplane/test_install.py checks those."""
    kubeconform = pinned("kubeconform")
    schemas.write(schemas.from_crd(yaml.safe_load(CRD.read_text())), tmp_path)
    jobs = [doc for _, doc in sample_objects() if doc["kind"] == "MigrationJob"]
    location = schemas.schema_location(tmp_path)
    result = subprocess.run([str(kubeconform), "-strict", "-summary", "-schema-location", location, "-"],
                            input=yaml.safe_dump_all(jobs), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Valid: {len(jobs)}, Invalid: 0" in result.stdout
    # The same check rejects a misspelt field, so passing means something.
    broken = {**jobs[0], "spec": {**jobs[0]["spec"], "paralelism": 2}}
    result = subprocess.run([str(kubeconform), "-strict", "-schema-location", location, "-"],
                            input=yaml.safe_dump(broken), capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "paralelism" in result.stdout


@pytest.mark.parametrize(("values", "complaint"), [
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (["--set", "replicaCount=two"], "want integer"),
    (["--set", "namespaces={Team_A}"], "does not match pattern"),
    (["--set", "worker.image.pullPolicy=Sometimes"], "pullPolicy"),
])
def test_values_schema_rejects_mistakes(helm: Path, values: list[str], complaint: str) -> None:
    result = subprocess.run([str(helm), "template", "datamover", str(CHART), *values], capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_metrics_are_served_on_a_named_port_behind_a_service(helm: Path) -> None:
    objects = render(helm)
    deployment = one(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert env_of(deployment)["DATAMOVER_METRICS_PORT"] == str(port)
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert not [o for o in objects if o["kind"] in ("ServiceMonitor", "ConfigMap")]
    off = render(helm, "--set", "metrics.enabled=false")
    assert not [o for o in off if o["kind"] == "Service"]
    assert "DATAMOVER_METRICS_PORT" not in env_of(one(off, "Deployment"))


def test_service_monitor_and_dashboard_ask_only_for_series_the_operator_exports(helm: Path) -> None:
    objects = render(helm, "--set", "metrics.serviceMonitor.enabled=true", "--set",
                     "metrics.serviceMonitor.labels.release=prom", "--set", "metrics.grafanaDashboard.enabled=true")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(objects, "Service")["metadata"]["labels"].items()
    dashboard = json.loads(one(objects, "ConfigMap")["data"]["datamover.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    asked = {name for e in exprs for name in re.findall(r"\b(datamover_[a-z_]+)", e)}
    exported = set(re.findall(r"\b(datamover_[a-z_]+)", (REPO / "operator" / "datamover" / "controller" /
                                                            "metrics.py").read_text()))
    # A histogram is asked for by its _bucket series, a counter by its _total.
    exported |= {f"{n}_bucket" for n in exported} | {f"{n}_total" for n in exported}
    assert asked and asked <= exported, asked - exported


@pytest.mark.parametrize(("mode", "accepted"), [("run", True), ("plan", True), ("dry-run", False), ("Plan", False)])
def test_the_crd_schema_takes_run_or_plan_as_spec_mode_and_names_the_field_when_refusing(
        tmp_path: Path, mode: str, accepted: bool) -> None:
    """The schema's enum, as kubeconform applies it offline; the API server's own refusal (kubectl apply) is checked
    in tests/controlplane/test_api_store_types.py."""
    kubeconform = pinned("kubeconform")
    schemas.write(schemas.from_crd(yaml.safe_load(CRD.read_text())), tmp_path)
    job = {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob", "metadata": {"name": "p"},
           "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"}, "mode": mode}}
    result = subprocess.run([str(kubeconform), "-strict", "-schema-location", schemas.schema_location(tmp_path), "-"],
                            input=yaml.safe_dump(job), capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is accepted, result.stdout + result.stderr
    if not accepted:
        assert "/spec/mode" in result.stdout and "'run', 'plan'" in result.stdout, result.stdout


def test_the_rest_facade_is_optional_and_reviews_its_callers(helm: Path) -> None:
    assert not [o for o in render(helm) if o["metadata"]["name"].endswith("-api")]
    rendered = render(helm, "--set", "api.enabled=true", "--set", "api.tls.secretName=api-tls",
                      "--set", "api.tenantNamespace=gelato-{tenant}")
    objects = [o for o in rendered if o["metadata"]["name"].endswith("-api")]
    deployment = one(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["datamover-api"]
    env = env_of(deployment)
    assert (env["DATAMOVER_API_TENANT_NAMESPACE"], env["DATAMOVER_API_TLS_CERT"]) == ("gelato-{tenant}",
                                                                                      "/tls/tls.crt")
    service = one(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    operator = next(o for o in render(helm) if o["kind"] == "Deployment")
    assert not operator["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    rules = {(r["apiGroups"][0], resource): set(r["verbs"]) for r in one(objects, "ClusterRole")["rules"]
             for resource in r["resources"]}
    assert rules[("authentication.k8s.io", "tokenreviews")] == {"create"}
    assert rules[("authorization.k8s.io", "subjectaccessreviews")] == {"create"}
    assert rules[("", "secrets")] == {"create"}  # never read: no answer carries a credential


def test_a_field_named_nullable_is_kept_when_openapi_becomes_json_schema() -> None:
    # The CRD kind's own schema (JSONSchemaProps) has a field called `nullable`: it must survive the conversion of the
    # keyword, or `kubeconform -strict` refuses every CRD that marks a field nullable.
    document = {"components": {"schemas": {"io.k8s.Props": {
        "type": "object", "x-kubernetes-group-version-kind": [{"group": "example.io", "version": "v1", "kind": "P"}],
        "properties": {"nullable": {"type": "boolean"}, "when": {"type": "string", "nullable": True}},
    }}}}
    (converted,) = schemas.from_openapi_v3(document).values()
    properties = converted["definitions"]["io.k8s.Props"]["properties"]
    assert properties["nullable"]["type"] == "boolean"
    assert properties["when"]["type"] == ["string", "null"] and "nullable" not in properties["when"]
