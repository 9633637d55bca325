"""Gelato's REST shapes to and from MigrationPlan/MigrationJob objects, as pure functions the server calls.

A Gelato plan's connections carry credentials inline; here they become a Secret per side (owned by the plan) and a
credentialsSecretRef in the plan's template. Going back, a connection is rendered from the template, which holds no
credential: nothing any function here returns for a response can carry one. Bad input raises BadRequest naming the
field, before anything is created.

A Gelato schedule policy (POST /policies) is kept as a labelled ConfigMap; a plan that names it (policyId) gets a copy
of its schedule as spec.schedule, with policyEnabled as the opposite of spec.suspend. Gelato's cron is robfig/cron v1's
(seconds first, day-of-week optional, descriptors); it is turned into the plan's five-field, minute-granular cron here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datamover.api import API_VERSION, MigrationStatus, Phase, SpecError
from datamover.plans import LABEL_PLAN, PLAN_KIND, PlanSpec

# The plan's name as the Gelato user gave it (a Kubernetes name allows less).
ANNOTATION_DISPLAY_NAME = "datamover.io/display-name"
# Which Gelato storType a side was created as (the template keeps only what datamover needs).
ANNOTATION_STOR_TYPE = "datamover.io/gelato-stor-type-"
LABEL_FACADE = "datamover.io/created-by"
FACADE = "datamover-api"

# A ConfigMap that is a Gelato policy carries this label (value POLICY); a plan made from a policy carries it too, with
# the policy's id as the value, so a policy in use is found by a label selector and cannot be deleted from under it.
LABEL_POLICY = "datamover.io/gelato-policy"
POLICY = "policy"
# The policy's Gelato name on a plan made from it (Gelato shows it as the plan's policyName).
ANNOTATION_POLICY_NAME = "datamover.io/gelato-policy-name"
# robfig/cron v1's descriptors that a MigrationPlan's schedule takes as they are (@every has no cron equivalent).
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

CONN_KEYS = ("endpoint", "bucketname", "region", "access", "security")
SECRET_CONN_KEYS = ("access", "security")
GCS_S3_ENDPOINT = "https://storage.googleapis.com"


class BadRequest(ValueError):
    """The request cannot be used as sent; the message names the field."""


@dataclass(frozen=True)
class StorType:
    """How one Gelato storType maps onto a datamover location."""

    store: str  # the location's type
    addressing_style: str = "auto"
    default_endpoint: str = ""
    endpoint_required: bool = False


STOR_TYPES: dict[str, StorType] = {
    "aws-s3": StorType("s3"),
    # Ceph RGW and IBM COS: S3 at the user's endpoint; RGW is commonly reached path-style.
    "ceph-s3": StorType("s3", addressing_style="path", endpoint_required=True),
    "ibm-cos": StorType("s3", endpoint_required=True),
    # Gelato's gcp-s3 is Google Cloud Storage through its S3-compatible XML API with HMAC keys.
    "gcp-s3": StorType("s3", default_endpoint=GCS_S3_ENDPOINT),
    # access = the storage account's name, security = its key.
    "azure-blob": StorType("azureBlob"),
}


@dataclass(frozen=True)
class NewPlan:
    """What a POST /plans creates: the plan, and a Secret per side (each to be owned by the plan once it exists)."""

    plan: dict[str, Any]
    secrets: tuple[dict[str, Any], ...]


def _object(body: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest(f"{field}: must be a JSON object")
    return body


def _conn(raw: Any, field: str) -> tuple[str, dict[str, str]]:
    conn = _object(raw, field)
    stor_type = conn.get("storType")
    if stor_type not in STOR_TYPES:
        raise BadRequest(f"{field}.storType: must be one of {', '.join(STOR_TYPES)} (got {stor_type!r})")
    entries = conn.get("connConfig")
    if not isinstance(entries, list):
        raise BadRequest(f"{field}.connConfig: must be a list of {{\"key\", \"value\"}}")
    config: dict[str, str] = {}
    for i, entry in enumerate(entries):
        entry = _object(entry, f"{field}.connConfig[{i}]")
        key, value = entry.get("key"), entry.get("value")
        if key not in CONN_KEYS:
            raise BadRequest(f"{field}.connConfig[{i}].key: must be one of {', '.join(CONN_KEYS)} (got {key!r})")
        if not isinstance(value, str):
            raise BadRequest(f"{field}.connConfig[{i}].value: must be a string")
        config[str(key)] = value
    kind = STOR_TYPES[str(stor_type)]
    for key in ("bucketname", "access", "security") + (("endpoint",) if kind.endpoint_required else ()):
        if not config.get(key):
            raise BadRequest(f"{field}.connConfig: {key!r} is required for storType {stor_type}")
    endpoint = config.get("endpoint", "")
    if endpoint and not re.match(r"^https?://[^\s/]+", endpoint):
        raise BadRequest(f"{field}.connConfig endpoint: must be an http:// or https:// URL")
    return str(stor_type), config


def _location(stor_type: str, config: Mapping[str, str], secret: str, prefix: str) -> dict[str, Any]:
    kind = STOR_TYPES[stor_type]
    location: dict[str, Any] = {"type": kind.store, "bucket": config["bucketname"],
                                "credentialsSecretRef": {"name": secret}}
    endpoint = config.get("endpoint") or kind.default_endpoint
    if endpoint:
        location["endpoint"] = endpoint
    if prefix:
        location["prefix"] = prefix
    if kind.store == "azureBlob":
        location["azureBlob"] = {"accountName": config["access"]}
    else:
        if config.get("region"):
            location["region"] = config["region"]
        if kind.addressing_style != "auto":
            location["addressingStyle"] = kind.addressing_style
    return location


def _secret_data(stor_type: str, config: Mapping[str, str]) -> dict[str, str]:
    if STOR_TYPES[stor_type].store == "azureBlob":
        return {"accountKey": config["security"]}
    return {"accessKeyId": config["access"], "secretAccessKey": config["security"]}


def kube_name(display: str) -> str:
    """A plan's Kubernetes name: the Gelato name made a DNS label, plus a random suffix (names need not be unique
    in Gelato)."""
    base = re.sub(r"[^a-z0-9-]+", "-", display.lower()).strip("-")[:40].strip("-") or "plan"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def gelato_cron(spec: Any, field: str) -> str:
    """A Gelato (robfig/cron v1) schedule as a MigrationPlan's cron, or BadRequest naming `field`.

    Gelato reads `second minute hour day-of-month month [day-of-week]`; a MigrationPlan starts runs by the minute, so
    the seconds must be one value (the run starts at the start of that minute) and are dropped.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise BadRequest(f"{field}: a cron schedule such as \"0 30 2 * * *\" (02:30:00 daily) is required")
    spec = spec.strip()
    if spec.startswith("@"):
        if spec.lower() in CRON_DESCRIPTORS:
            return str(spec.lower())
        raise BadRequest(f"{field}: {spec!r} is not supported; use one of {', '.join(CRON_DESCRIPTORS)} or six cron "
                         "fields (second minute hour day-of-month month day-of-week)")
    fields = spec.split()
    if len(fields) not in (5, 6):
        raise BadRequest(f"{field}: {spec!r} has {len(fields)} fields; Gelato's cron has six (second minute hour "
                         "day-of-month month day-of-week), the last optional")
    second, *rest = fields
    if not second.isdigit() or int(second) > 59:
        raise BadRequest(f"{field}: the seconds field must be one value from 0 to 59 (got {second!r}); datamover "
                         "starts runs by the minute")
    cron = " ".join(part.replace("?", "*") for part in (rest if len(rest) == 5 else [*rest, "*"]))
    try:
        PlanSpec.from_spec({"schedule": cron})  # the operator's own check, so what passes here it can run
    except SpecError:
        raise BadRequest(f"{field}: {spec!r} is not a cron schedule Gelato's format allows") from None
    return cron


def _time_zone(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field}: must be a time zone name such as Europe/Berlin")
    try:
        PlanSpec.from_spec({"timeZone": value})
    except SpecError:
        raise BadRequest(f"{field}: {value!r} is not a time zone name such as Europe/Berlin") from None
    return value


def new_policy(body: Any, namespace: str) -> dict[str, Any]:
    """The ConfigMap a Gelato POST /policies body asks for, or BadRequest naming the first bad field."""
    body = _object(body, "body")
    display = body.get("name")
    if not isinstance(display, str) or not display.strip():
        raise BadRequest("name: a non-empty string is required")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise BadRequest("description: must be a string")
    schedule = _object(body.get("schedule"), "schedule")
    if schedule.get("type", "cron") != "cron":
        raise BadRequest(f"schedule.type: only \"cron\" is supported (got {schedule.get('type')!r})")
    # Gelato's JSON spells it tiggerProperties (sic); the correct spelling is taken too.
    key = "tiggerProperties" if "tiggerProperties" in schedule else "triggerProperties"
    trigger = schedule.get(key)
    gelato_cron(trigger, f"schedule.{key}")
    data = {"name": display, "description": description, "type": "cron", "tiggerProperties": str(trigger).strip()}
    if "timeZone" in schedule:  # datamover's addition: Gelato read schedules in its server's local zone
        data["timeZone"] = _time_zone(schedule["timeZone"], "schedule.timeZone")
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"policy-{kube_name(display)}", "namespace": namespace,
                     "labels": {LABEL_FACADE: FACADE, LABEL_POLICY: POLICY}},
        "data": data,
    }


def is_policy(config_map: Mapping[str, Any]) -> bool:
    """Whether a ConfigMap is a Gelato policy (any other ConfigMap of the namespace is not the facade's to show)."""
    return ((config_map.get("metadata") or {}).get("labels") or {}).get(LABEL_POLICY) == POLICY


def policy_view(config_map: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """A policy ConfigMap as Gelato's `policy` object."""
    data = config_map.get("data") or {}
    schedule = {"type": data.get("type", "cron"), "tiggerProperties": data.get("tiggerProperties", "")}
    if data.get("timeZone"):
        schedule["timeZone"] = data["timeZone"]
    return {"id": config_map["metadata"]["name"], "name": data.get("name", ""), "tenant": tenant,
            "description": data.get("description", ""), "schedule": schedule}


def requested_policy(body: Any) -> str | None:
    """The policyId a POST /plans body names, if any (the server reads that policy before calling new_plan)."""
    policy_id = body.get("policyId") if isinstance(body, Mapping) else None
    if policy_id in (None, ""):
        return None
    if not isinstance(policy_id, str):
        raise BadRequest("policyId: must be a string, the id of a policy")
    return policy_id


def new_plan(body: Any, namespace: str, policy: Mapping[str, Any] | None = None) -> NewPlan:
    """The objects a Gelato POST /plans body asks for, or BadRequest naming the first bad field. `policy` is the
    ConfigMap of the policy the body names (policyId), None if there is none by that id."""
    body = _object(body, "body")
    display = body.get("name")
    if not isinstance(display, str) or not display.strip():
        raise BadRequest("name: a non-empty string is required")
    if body.get("type", "migration") != "migration":
        raise BadRequest(f"type: only \"migration\" plans are supported (got {body.get('type')!r})")
    remain = body.get("remainSource", True)
    if not isinstance(remain, bool):
        raise BadRequest("remainSource: must be true or false")
    filter_spec = _object(body.get("filter") or {}, "filter")
    unknown = sorted(set(filter_spec) - {"prefix"})
    if unknown:
        raise BadRequest(f"filter.{unknown[0]}: not supported (filter takes a prefix only)")
    prefix = filter_spec.get("prefix", "")
    if not isinstance(prefix, str):
        raise BadRequest("filter.prefix: must be a string")
    source_type, source = _conn(body.get("sourceConn"), "sourceConn")
    dest_type, dest = _conn(body.get("destConn"), "destConn")
    enabled = body.get("policyEnabled", False)
    if not isinstance(enabled, bool):
        raise BadRequest("policyEnabled: must be true or false")
    policy_id = requested_policy(body)
    if policy_id is not None and (policy is None or not is_policy(policy)):
        raise BadRequest(f"policyId: no policy {policy_id!r} in this tenant")
    name = kube_name(display)
    secrets = {"source": f"{name}-source", "destination": f"{name}-destination"}
    labels = {LABEL_FACADE: FACADE}
    plan: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": PLAN_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {
            ANNOTATION_DISPLAY_NAME: display,
            ANNOTATION_STOR_TYPE + "source": source_type,
            ANNOTATION_STOR_TYPE + "destination": dest_type,
        }},
        "spec": {"jobTemplate": {"spec": {
            "source": _location(source_type, source, secrets["source"], prefix),
            "destination": _location(dest_type, dest, secrets["destination"], ""),
            "remainSource": remain,
        }}},
    }
    if policy_id is not None and policy is not None:
        # Gelato: a plan with a policy runs on its schedule while policyEnabled; disabled, it runs on demand only.
        data = policy.get("data") or {}
        plan["spec"].update(schedule=gelato_cron(data.get("tiggerProperties"), "policyId"), suspend=not enabled)
        if data.get("timeZone"):
            plan["spec"]["timeZone"] = data["timeZone"]
        plan["metadata"]["labels"] = {**labels, LABEL_POLICY: policy_id}
        plan["metadata"]["annotations"][ANNOTATION_POLICY_NAME] = data.get("name", "")
    made = tuple({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secrets[side], "namespace": namespace, "labels": {**labels, LABEL_PLAN: name}},
        "stringData": _secret_data(kind, config),
    } for side, kind, config in (("source", source_type, source), ("destination", dest_type, dest)))
    return NewPlan(plan, made)


def owned_by(secret: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """`secret` with the created plan as its owner, so deleting the plan deletes its credentials."""
    meta = plan["metadata"]
    return {**secret, "metadata": {**secret["metadata"], "ownerReferences": [{
        "apiVersion": API_VERSION, "kind": PLAN_KIND, "name": meta["name"], "uid": meta["uid"],
        "controller": True, "blockOwnerDeletion": True}]}}


def _conn_view(location: Mapping[str, Any], stor_type: str) -> dict[str, Any]:
    """A connection as Gelato shows it: where, never the credentials (those are in the Secret only)."""
    config = [{"key": "bucketname", "value": str(location.get("bucket", ""))}]
    if location.get("endpoint"):
        config.append({"key": "endpoint", "value": str(location["endpoint"])})
    if location.get("region"):
        config.append({"key": "region", "value": str(location["region"])})
    return {"storType": stor_type, "connConfig": config}


def _stor_type(meta: Mapping[str, Any], side: str, location: Mapping[str, Any]) -> str:
    given = (meta.get("annotations") or {}).get(ANNOTATION_STOR_TYPE + side)
    if given:
        return str(given)
    return "azure-blob" if location.get("type") == "azureBlob" else "aws-s3"


def plan_view(plan: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """A MigrationPlan as Gelato's `plan` object."""
    meta = plan["metadata"]
    spec = plan.get("spec") or {}
    template = (spec.get("jobTemplate") or {}).get("spec") or {}
    source, dest = template.get("source") or {}, template.get("destination") or {}
    view: dict[str, Any] = {
        "id": meta["name"],
        "name": (meta.get("annotations") or {}).get(ANNOTATION_DISPLAY_NAME, meta["name"]),
        "type": "migration",
        "tenantId": tenant,
        "sourceConn": _conn_view(source, _stor_type(meta, "source", source)),
        "destConn": _conn_view(dest, _stor_type(meta, "destination", dest)),
        "remainSource": bool(template.get("remainSource", True)),
        "filter": {"prefix": source["prefix"]} if source.get("prefix") else {},
        "createdAt": meta.get("creationTimestamp"),
    }
    # Gelato's policy members; a plan made with kubectl has a schedule but no policy: its policyId is empty.
    view["policyId"] = (meta.get("labels") or {}).get(LABEL_POLICY, "")
    view["policyName"] = (meta.get("annotations") or {}).get(ANNOTATION_POLICY_NAME, "")
    view["policyEnabled"] = bool(spec.get("schedule")) and not spec.get("suspend", False)
    if spec.get("schedule"):
        view["schedule"] = {"cron": spec["schedule"], "timeZone": spec.get("timeZone", "UTC")}
    return view


def _where(location: Mapping[str, Any]) -> str:
    return f"{location.get('bucket', '')}/{location.get('prefix', '')}".rstrip("/")


def job_view(job: Mapping[str, Any], plan_names: Mapping[str, str]) -> dict[str, Any]:
    """A MigrationJob as Gelato's `job` object; `plan_names` maps plan ids to their Gelato names."""
    meta = job["metadata"]
    spec = job.get("spec") or {}
    status = MigrationStatus.of(job)
    progress = status.progress
    plan_id = (meta.get("labels") or {}).get(LABEL_PLAN, "")
    total, done = int(progress.get("bytesTotal", 0)), int(progress.get("bytesMigrated", 0)) + int(
        progress.get("bytesSkipped", 0))
    rate = float(progress.get("bytesPerSecond") or 0)
    return {
        "id": meta["name"],
        "type": "migration",
        "planName": plan_names.get(plan_id, plan_id),
        "planId": plan_id,
        "sourceLocation": _where(spec.get("source") or {}),
        "destLocation": _where(spec.get("destination") or {}),
        "status": str(status.phase or Phase.PENDING),
        "createTime": meta.get("creationTimestamp"),
        "endTime": status.completion_time or None,
        "totalCapacity": total,
        "passedCapacity": done,
        "totalCount": int(progress.get("objectsTotal", 0)),
        "passedCount": int(progress.get("objectsMigrated", 0)) + int(progress.get("objectsSkipped", 0)),
        "progress": 100 if status.phase is Phase.SUCCEEDED else int(str(progress.get("percent", "0%")).rstrip("%")),
        "timeRequired": int((total - done) / rate) if rate and total > done and not status.final else 0,
    }
