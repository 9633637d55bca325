"""datamover-api over HTTPS against a real API server (no node), used as a Gelato client would: who may do what is
RBAC's answer, bad bodies are refused naming the field with nothing created, credentials never come back, and an
abort of a job that has not started answers `cancelled` (the operator runs beside it; the run is suspended, so no
worker ever starts). A Gelato schedule policy puts a plan on the operator's schedule, and a plan whose Secret the API
server refuses half-way leaves neither plan nor Secret behind."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest

from datamover.facade import openapi
from tests.controlplane.conftest import local_process
from tests.ground.controlplane import CertificateAuthority, ControlPlane
from tests.ground.plugin_controlplane import Kubectl
from tests.ground.procs import free_port

pytestmark = pytest.mark.ground

REPO = Path(__file__).resolve().parents[2]
ACCESS, SECURITY = "AKIAGELATOCLIENT", "very/secret+key"
ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "gelato-portal"},
    "rules": [
        {"apiGroups": ["datamover.io"], "resources": ["migrationplans", "migrationjobs"],
         "verbs": ["get", "list", "create", "delete", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "delete"]},
    ],
}


def conn(stor_type: str, **config: str) -> dict[str, Any]:
    return {"storType": stor_type, "connConfig": [{"key": k, "value": v} for k, v in config.items()]}


PLAN = {
    "name": "Photos nightly", "type": "migration", "remainSource": True, "filter": {"prefix": "2024/"},
    "sourceConn": conn("aws-s3", endpoint="http://127.0.0.1:9", bucketname="photos", access=ACCESS,
                       security=SECURITY),
    "destConn": conn("ceph-s3", endpoint="http://127.0.0.1:9", bucketname="archive", access="rgw",
                     security="rgw-secret"),
}


@dataclass
class Facade:
    url: str
    context: ssl.SSLContext

    def call(self, method: str, path: str, token: str | None, body: Any = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def tenant(plans_namespace: str) -> str:
    return plans_namespace  # the default mapping: a tenantId is its namespace's name


@pytest.fixture
def facade(control_plane: ControlPlane, tenant: str, tmp_path: Path) -> Iterator[Facade]:
    """datamover-api with TLS (a cert from the ground's CA) and the datamover operator, both as the admin."""
    ca = CertificateAuthority(cert_file=control_plane.ca_file, key_file=control_plane.ca_key_file)
    cert, key = ca.issue(tmp_path / "api", "datamover-api", ip_addresses=["127.0.0.1"], server=True)
    port = free_port()
    api = local_process(control_plane, "datamover.facade.main", "--address", "127.0.0.1", "--port", str(port),
                        "--tls-cert", str(cert), "--tls-key", str(key), "--abort-wait-seconds", "30")
    operator = local_process(control_plane, "datamover.controller.main", "--namespace", tenant,
                             output=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    served = Facade(f"https://127.0.0.1:{port}", context)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            served.call("GET", "/openapi.json", None)
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield served
    finally:
        operator.terminate()
        api.terminate()
        output = api.communicate(timeout=30)[0]
        operator.wait(timeout=30)
        for secret in (ACCESS, SECURITY, "rgw-secret"):
            assert secret not in output, "the facade logged a credential"


def token_for(control_plane: ControlPlane, kubectl: Kubectl, namespace: str, name: str, *, bound: bool) -> str:
    kubectl("create", "serviceaccount", name, "-n", namespace)
    if bound:
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(ROLE))
        kubectl("create", "rolebinding", f"{name}-portal", "-n", namespace, "--role=gelato-portal",
                f"--serviceaccount={namespace}:{name}")
    return control_plane.request_token(namespace, name)


def test_a_gelato_client_creates_runs_and_aborts_over_https(control_plane: ControlPlane, kubectl: Kubectl,
                                                            tenant: str, facade: Facade) -> None:
    portal = token_for(control_plane, kubectl, tenant, "portal", bound=True)
    nobody = token_for(control_plane, kubectl, tenant, "nobody", bound=False)

    # No anonymous access; RBAC decides.
    assert facade.call("GET", f"/v1/{tenant}/plans", None)[0] == 401
    assert facade.call("GET", f"/v1/{tenant}/plans", "not-a-token")[0] == 401
    status, answer = facade.call("POST", f"/v1/{tenant}/plans", nobody, PLAN)
    assert status == 403 and "may not create migrationplans" in answer["message"]

    # Bad requests name the field and create nothing.
    status, answer = facade.call("POST", f"/v1/{tenant}/plans", portal, raw=b"{not json")
    assert (status, answer["message"]) == (400, "body: not valid JSON")
    status, answer = facade.call("POST", f"/v1/{tenant}/plans", portal,
                                 {**PLAN, "destConn": {**PLAN["destConn"], "storType": "swift"}})
    assert status == 400 and answer["message"].startswith("destConn.storType")
    status, answer = facade.call("POST", f"/v1/{tenant}/plans", portal, {k: v for k, v in PLAN.items() if k != "name"})
    assert status == 400 and answer["message"].startswith("name")
    assert json.loads(kubectl("get", "migrationplans,secrets", "-n", tenant, "-l", "datamover.io/created-by",
                              "-o", "json").stdout)["items"] == []

    # A plan: its credentials go into Secrets it owns, and never come back.
    status, created = facade.call("POST", f"/v1/{tenant}/plans", portal, PLAN)
    assert status == 200, created
    plan_id = created["plan"]["id"]
    for answer in (created, facade.call("GET", f"/v1/{tenant}/plans/{plan_id}", portal)[1],
                   facade.call("GET", f"/v1/{tenant}/plans", portal)[1]):
        text = json.dumps(answer)
        assert ACCESS not in text and SECURITY not in text and "rgw-secret" not in text
    assert created["plan"]["name"] == "Photos nightly"
    secrets = json.loads(kubectl("get", "secrets", "-n", tenant, "-l", f"datamover.io/plan={plan_id}", "-o",
                                 "json").stdout)["items"]
    assert sorted(s["metadata"]["ownerReferences"][0]["name"] for s in secrets) == [plan_id, plan_id]
    assert facade.call("GET", f"/v1/{tenant}/plans/no-such-plan", portal)[0] == 404
    assert facade.call("POST", f"/v1/{tenant}/plans/no-such-plan/run", portal)[0] == 404

    # Run it; the job is there with Gelato's fields; abort it before it started: cancelled. Its runs are made
    # suspended first (as a Kubernetes user may edit a plan), so no worker can start, even where the session's ground
    # has a node, and the abort is sure to come before anything is written.
    kubectl("patch", "migrationplan", plan_id, "-n", tenant, "--type", "merge",
            "-p", json.dumps({"spec": {"jobTemplate": {"spec": {"suspend": True}}}}))
    status, run = facade.call("POST", f"/v1/{tenant}/plans/{plan_id}/run", portal)
    assert status == 200, run
    job_id = run["jobId"]
    status, job = facade.call("GET", f"/v1/{tenant}/jobs/{job_id}", portal)
    assert status == 200 and set(job["job"]) == set(openapi.JOB["properties"])
    assert (job["job"]["planId"], job["job"]["planName"], job["job"]["sourceLocation"]) == (
        plan_id, "Photos nightly", "photos/2024")
    assert [j["id"] for j in facade.call("GET", f"/v1/{tenant}/jobs", portal)[1]["jobs"]] == [job_id]
    status, aborted = facade.call("POST", f"/v1/{tenant}/jobs/{job_id}/abort", portal)
    assert (status, aborted) == (200, {"Id": job_id, "Status": "cancelled"})
    status, again = facade.call("POST", f"/v1/{tenant}/jobs/{job_id}/abort", portal)
    assert status == 409 and "cancelled" in again["message"]
    assert facade.call("POST", f"/v1/{tenant}/jobs/no-such-job/abort", portal)[0] == 404

    # Deleting the plan takes its Secrets and jobs with it.
    assert facade.call("DELETE", f"/v1/{tenant}/plans/{plan_id}", portal)[0] == 200
    assert facade.call("GET", f"/v1/{tenant}/plans/{plan_id}", portal)[0] == 404
    deadline = time.monotonic() + 60
    left: list[Any] = [None]
    while left and time.monotonic() < deadline:
        left = json.loads(kubectl("get", "secrets,migrationjobs", "-n", tenant, "-l", f"datamover.io/plan={plan_id}",
                                  "-o", "json").stdout)["items"]
        time.sleep(0.5)
    assert left == [], "the plan's Secrets and jobs outlived it"


def gone(kubectl: Kubectl, namespace: str, what: str, selector: str) -> bool:
    """Wait (up to a minute: the garbage collector's pace) until no `what` matching `selector` is left."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not json.loads(kubectl("get", what, "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]:
            return True
        time.sleep(0.5)
    return False


def test_a_gelato_policy_puts_a_plan_on_the_operators_schedule(control_plane: ControlPlane, kubectl: Kubectl,
                                                                tenant: str, facade: Facade) -> None:
    portal = token_for(control_plane, kubectl, tenant, "portal", bound=True)
    api = f"/v1/{tenant}"

    # Gelato's dashboard sends six fields, seconds first; a schedule datamover cannot keep is refused, naming it.
    nightly = {"name": "cron test", "tenant": "all", "description": "02:30 in Berlin",
               "schedule": {"type": "cron", "tiggerProperties": "00 30 2 * * ?", "timeZone": "Europe/Berlin"}}
    status, answer = facade.call("POST", f"{api}/policies", portal,
                                 {**nightly, "schedule": {"type": "cron", "tiggerProperties": "*/10 * * * * *"}})
    assert status == 400 and answer["message"].startswith("schedule.tiggerProperties"), answer
    assert facade.call("GET", f"{api}/policies", portal) == (200, {"policies": []})
    status, created = facade.call("POST", f"{api}/policies", portal, nightly)
    assert status == 200, created
    policy = created["policy"]
    assert (policy["name"], policy["schedule"]["tiggerProperties"]) == ("cron test", "00 30 2 * * ?")
    assert facade.call("GET", f"{api}/policies/{policy['id']}", portal) == (200, {"policy": policy})
    assert facade.call("GET", f"{api}/policies", portal) == (200, {"policies": [policy]})
    # Only the facade's policies are policies: another ConfigMap of the namespace is not shown.
    assert facade.call("GET", f"{api}/policies/kube-root-ca.crt", portal)[0] == 404

    status, answer = facade.call("POST", f"{api}/plans", portal, {**PLAN, "policyId": "policy-none-000000"})
    assert status == 400 and answer["message"].startswith("policyId"), answer

    # Enabled, the plan is on the operator's schedule; disabled, it runs on demand only.
    status, on = facade.call("POST", f"{api}/plans", portal, {**PLAN, "policyId": policy["id"], "policyEnabled": True})
    assert status == 200, on
    assert {k: on["plan"][k] for k in ("policyId", "policyName", "policyEnabled", "schedule")} == {
        "policyId": policy["id"], "policyName": "cron test", "policyEnabled": True,
        "schedule": {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}}
    status, off = facade.call("POST", f"{api}/plans", portal, {**PLAN, "policyId": policy["id"]})
    assert status == 200 and off["plan"]["policyEnabled"] is False, off
    assert facade.call("GET", f"{api}/plans/{off['plan']['id']}", portal)[1]["plan"]["policyEnabled"] is False

    def plan_status(plan_id: str, reason: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = json.loads(kubectl("get", "migrationplan", plan_id, "-n", tenant, "-o", "json").stdout)
            if (found.get("status") or {}).get("reason") == reason:
                return cast(dict[str, Any], found["status"])
            time.sleep(0.5)
        raise AssertionError(f"plan {plan_id} never reached {reason}: {found.get('status')}")

    next_run = plan_status(on["plan"]["id"], "Scheduled")["nextScheduleTime"]
    when = dt.datetime.fromisoformat(next_run.replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/Berlin"))
    assert (when.hour, when.minute, when.second) == (2, 30, 0)
    assert "nextScheduleTime" not in plan_status(off["plan"]["id"], "Suspended")

    # A policy in use stays (Gelato refuses it too); unused, it goes.
    status, answer = facade.call("DELETE", f"{api}/policies/{policy['id']}", portal)
    assert status == 409 and on["plan"]["id"] in answer["message"] and off["plan"]["id"] in answer["message"]
    for plan in (on, off):
        assert facade.call("DELETE", f"{api}/plans/{plan['plan']['id']}", portal)[0] == 200
    assert facade.call("DELETE", f"{api}/policies/{policy['id']}", portal) == (200, {})
    assert facade.call("GET", f"{api}/policies/{policy['id']}", portal)[0] == 404


def test_a_plan_whose_secret_the_api_server_refuses_leaves_nothing_behind(
        control_plane: ControlPlane, kubectl: Kubectl, tenant: str, facade: Facade) -> None:
    """A quota that lets exactly one more Secret into the namespace: the plan and its source Secret are created, the
    destination Secret is refused by the API server, and the facade takes back what it made."""
    portal = token_for(control_plane, kubectl, tenant, "portal", bound=True)
    secrets = len(json.loads(kubectl("get", "secrets", "-n", tenant, "-o", "json").stdout)["items"])
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "one-more-secret"},
             "spec": {"hard": {"secrets": str(secrets + 1)}}}
    kubectl("apply", "-n", tenant, "-f", "-", input=json.dumps(quota))
    # The API server admits Secrets against the quota only once the quota controller has counted them.
    kubectl("wait", "-n", tenant, "resourcequota/one-more-secret", "--for=jsonpath={.status.used.secrets}="
            + str(secrets), "--timeout=60s")

    status, answer = facade.call("POST", f"/v1/{tenant}/plans", portal, PLAN)
    assert status == 403 and "exceeded quota" in answer["message"], answer
    # The refused step was the second Secret, so the plan and the first Secret had been made.
    assert "-destination" in answer["message"], answer
    assert gone(kubectl, tenant, "migrationplans,secrets", "datamover.io/created-by"), "a refused plan left objects"
    assert facade.call("GET", f"/v1/{tenant}/plans", portal) == (200, {"plans": []})
