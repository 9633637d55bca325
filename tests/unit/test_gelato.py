"""The REST facade's Gelato shapes: a plan body becomes a MigrationPlan plus credential Secrets, bad bodies are refused
naming the field, and no answer ever carries a credential; the OpenAPI document describes exactly the server's
routes and answers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from datamover.facade import gelato, openapi
from datamover.facade.server import Settings, application

ACCESS, SECURITY = "AKIAEXAMPLEACCESS", "s3cr3t/KEY+value"


def conn(stor_type: str, **config: str) -> dict[str, Any]:
    return {"storType": stor_type, "connConfig": [{"key": k, "value": v} for k, v in config.items()]}


BODY: dict[str, Any] = {
    "name": "Photos to Ceph", "type": "migration", "remainSource": False, "filter": {"prefix": "2024/"},
    "sourceConn": conn("aws-s3", bucketname="photos", region="eu-west-1", access=ACCESS, security=SECURITY),
    "destConn": conn("ceph-s3", endpoint="http://rgw.example:7480", bucketname="archive", access="rgw-user",
                     security="rgw-secret"),
}


def test_a_plan_body_becomes_a_plan_and_a_secret_per_side() -> None:
    new = gelato.new_plan(BODY, "tenant-a")
    plan = new.plan
    assert plan["metadata"]["name"].startswith("photos-to-ceph-")
    assert plan["metadata"]["annotations"][gelato.ANNOTATION_DISPLAY_NAME] == "Photos to Ceph"
    template = plan["spec"]["jobTemplate"]["spec"]
    name = plan["metadata"]["name"]
    assert template == {
        "source": {"type": "s3", "bucket": "photos", "prefix": "2024/", "region": "eu-west-1",
                   "credentialsSecretRef": {"name": f"{name}-source"}},
        "destination": {"type": "s3", "bucket": "archive", "endpoint": "http://rgw.example:7480",
                        "addressingStyle": "path", "credentialsSecretRef": {"name": f"{name}-destination"}},
        "remainSource": False,
    }
    assert [s["stringData"] for s in new.secrets] == [
        {"accessKeyId": ACCESS, "secretAccessKey": SECURITY},
        {"accessKeyId": "rgw-user", "secretAccessKey": "rgw-secret"},
    ]
    assert ACCESS not in json.dumps(plan) and SECURITY not in json.dumps(plan)


def test_azure_and_gcp_connections_map_to_their_stores() -> None:
    body = {**BODY, "sourceConn": conn("azure-blob", bucketname="photos", access="acmephotos", security="azkey"),
            "destConn": conn("gcp-s3", bucketname="archive", access="GOOGHMAC", security="hmacsecret")}
    new = gelato.new_plan(body, "t")
    template = new.plan["spec"]["jobTemplate"]["spec"]
    assert template["source"]["type"] == "azureBlob"
    assert template["source"]["azureBlob"] == {"accountName": "acmephotos"}
    assert template["destination"]["endpoint"] == gelato.GCS_S3_ENDPOINT
    assert new.secrets[0]["stringData"] == {"accountKey": "azkey"}


def _without(path: str) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[last]
    return body


@pytest.mark.parametrize(("body", "field"), [
    ("not an object", "body"),
    (_without("name"), "name"),
    (_without("sourceConn"), "sourceConn"),
    ({**BODY, "destConn": {**BODY["destConn"], "storType": "swift"}}, "destConn.storType"),
    ({**BODY, "sourceConn": conn("aws-s3", bucketname="b", access="a")}, "sourceConn.connConfig: 'security'"),
    ({**BODY, "destConn": conn("ceph-s3", bucketname="b", access="a", security="s")},
     "destConn.connConfig: 'endpoint'"),
    ({**BODY, "sourceConn": {"storType": "aws-s3", "connConfig": [{"key": "password", "value": "x"}]}},
     "sourceConn.connConfig[0].key"),
    ({**BODY, "remainSource": "yes"}, "remainSource"),
    ({**BODY, "type": "lifecycle"}, "type"),
    ({**BODY, "filter": {"tag": "x"}}, "filter.tag"),
    ({**BODY, "destConn": conn("ibm-cos", endpoint="ftp://x", bucketname="b", access="a", security="s")},
     "destConn.connConfig endpoint"),
])
def test_a_bad_plan_body_is_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(gelato.BadRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        gelato.new_plan(body, "t")


def test_no_plan_view_carries_a_credential() -> None:
    new = gelato.new_plan(BODY, "tenant-a")
    meta = {**new.plan["metadata"], "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"}
    created = {**new.plan, "metadata": meta}
    view = gelato.plan_view(created, "tenant-a")
    text = json.dumps(view)
    for secret in (ACCESS, SECURITY, "rgw-user", "rgw-secret"):
        assert secret not in text
    assert view["sourceConn"] == conn("aws-s3", bucketname="photos", region="eu-west-1")
    assert view["destConn"] == conn("ceph-s3", bucketname="archive", endpoint="http://rgw.example:7480")
    assert (view["name"], view["remainSource"], view["filter"]) == ("Photos to Ceph", False, {"prefix": "2024/"})


def test_a_job_view_reports_progress_as_gelato_does() -> None:
    job = {"metadata": {"name": "p-abc", "labels": {"datamover.io/plan": "p"}, "creationTimestamp": "t0"},
           "spec": {"source": {"bucket": "photos", "prefix": "2024/"}, "destination": {"bucket": "archive"}},
           "status": {"phase": "running", "progress": {
               "bytesTotal": 1000, "bytesMigrated": 300, "bytesSkipped": 100, "objectsTotal": 10,
               "objectsMigrated": 3, "objectsSkipped": 1, "percent": "40%", "bytesPerSecond": 60}}}
    view = gelato.job_view(job, {"p": "Photos"})
    assert view == {"id": "p-abc", "type": "migration", "planName": "Photos", "planId": "p",
                    "sourceLocation": "photos/2024", "destLocation": "archive", "status": "running",
                    "createTime": "t0", "endTime": None, "totalCapacity": 1000, "passedCapacity": 400,
                    "totalCount": 10, "passedCount": 4, "progress": 40, "timeRequired": 10}
    assert set(view) == set(openapi.JOB["properties"])


def test_the_openapi_document_describes_exactly_the_servers_routes() -> None:
    app = application(Settings())
    served = {(r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.resource is not None}
    documented = {(path, method) for path, item in openapi.DOCUMENT["paths"].items() for method in item
                  if method != "parameters"}
    assert served == documented
    for path, item in openapi.DOCUMENT["paths"].items():
        declared = {p["name"] for p in item.get("parameters", [])}
        assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path


@pytest.mark.parametrize(("gelato_spec", "cron"), [
    ("00 30 2 * * ?", "30 2 * * *"),  # what Gelato's dashboard sends: seconds first, ? for any day of the week
    ("0 */15 * * * MON-FRI", "*/15 * * * MON-FRI"),
    ("0 0 3 1 *", "0 3 1 * *"),  # robfig/cron v1: the day of the week may be left out
    ("30 0 6 * * *", "0 6 * * *"),  # a run starts at the minute: the seconds are dropped
    ("@Daily", "@daily"),
])
def test_gelatos_cron_becomes_a_plans_minute_cron(gelato_spec: str, cron: str) -> None:
    assert gelato.gelato_cron(gelato_spec, "f") == cron


def policy_map(body: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap of a policy as the API server answers it (a name, a creation time)."""
    made = gelato.new_policy(body, "tenant-a")
    return {**made, "metadata": {**made["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"}}


NIGHTLY = {"name": "cron test", "tenant": "all", "description": "nightly",
           "schedule": {"type": "cron", "tiggerProperties": "00 30 2 * * *"}}


@pytest.mark.parametrize(("body", "field"), [
    ({**NIGHTLY, "name": ""}, "name"),
    ({**NIGHTLY, "schedule": "daily"}, "schedule"),
    ({**NIGHTLY, "schedule": {"type": "interval", "tiggerProperties": "1h"}}, "schedule.type"),
    ({**NIGHTLY, "schedule": {"type": "cron"}}, "schedule.triggerProperties"),
    ({**NIGHTLY, "schedule": {"tiggerProperties": "* * * * * *"}}, "schedule.tiggerProperties: the seconds"),
    ({**NIGHTLY, "schedule": {"tiggerProperties": "0 0 25 * * *"}}, "schedule.tiggerProperties"),
    ({**NIGHTLY, "schedule": {"tiggerProperties": "@every 1h"}}, "schedule.tiggerProperties"),
    ({**NIGHTLY, "schedule": {"tiggerProperties": "0 0 2 * * *", "timeZone": "Mars/Base"}}, "schedule.timeZone"),
    ({**NIGHTLY, "description": 7}, "description"),
])
def test_a_bad_policy_is_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(gelato.BadRequest, match=f"^{field}"):
        gelato.new_policy(body, "t")


def test_a_policy_is_shown_back_as_gelato_sent_it() -> None:
    view = gelato.policy_view(policy_map({**NIGHTLY, "schedule": {"triggerProperties": "0 0 4 * * *",
                                                                  "timeZone": "Europe/Berlin"}}), "tenant-a")
    assert view["id"].startswith("policy-cron-test-")
    assert {k: v for k, v in view.items() if k != "id"} == {
        "name": "cron test", "tenant": "tenant-a", "description": "nightly",
        "schedule": {"type": "cron", "tiggerProperties": "0 0 4 * * *", "timeZone": "Europe/Berlin"}}
    assert set(view) == set(openapi.POLICY["properties"])


@pytest.mark.parametrize("enabled", [True, False])
def test_a_plan_with_a_policy_runs_on_its_schedule_while_the_policy_is_enabled(enabled: bool) -> None:
    policy = policy_map({**NIGHTLY, "schedule": {"tiggerProperties": "0 30 2 * * *", "timeZone": "Europe/Berlin"}})
    policy_id = policy["metadata"]["name"]
    new = gelato.new_plan({**BODY, "policyId": policy_id, "policyEnabled": enabled}, "tenant-a", policy)
    spec = new.plan["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == ("30 2 * * *", "Europe/Berlin", not enabled)
    created = {**new.plan, "metadata": {**new.plan["metadata"], "uid": "u", "creationTimestamp": "t0"}}
    view = gelato.plan_view(created, "tenant-a")
    assert (view["policyId"], view["policyName"], view["policyEnabled"]) == (policy_id, "cron test", enabled)
    assert view["schedule"] == {"cron": "30 2 * * *", "timeZone": "Europe/Berlin"}
    assert set(view) == set(openapi.PLAN["properties"])


def test_a_plan_without_a_policy_runs_on_demand() -> None:
    new = gelato.new_plan({**BODY, "policyEnabled": False}, "tenant-a")
    assert "schedule" not in new.plan["spec"]
    view = gelato.plan_view({**new.plan, "metadata": {**new.plan["metadata"], "uid": "u"}}, "tenant-a")
    assert (view["policyId"], view["policyEnabled"]) == ("", False)


@pytest.mark.parametrize(("body", "policy", "field"), [
    ({**BODY, "policyId": "policy-gone-123456", "policyEnabled": True}, None, "policyId: no policy"),
    # a ConfigMap of that name that is not a policy is not one
    ({**BODY, "policyId": "kube-root-ca.crt"}, {"metadata": {"name": "kube-root-ca.crt"}, "data": {}},
     "policyId: no policy"),
    ({**BODY, "policyId": 42}, None, "policyId: must be a string"),
    ({**BODY, "policyEnabled": "yes"}, None, "policyEnabled"),
])
def test_a_plan_naming_no_usable_policy_is_refused(body: Any, policy: Any, field: str) -> None:
    with pytest.raises(gelato.BadRequest, match=f"^{field}"):
        gelato.new_plan(body, "t", policy)
