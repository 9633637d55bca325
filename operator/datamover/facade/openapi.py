"""The facade's OpenAPI 3 document: every route, its parameters, bodies and answers, served at /openapi.json and
checked against the server's routes and real answers by the tests."""

from __future__ import annotations

from typing import Any

from datamover.facade.gelato import CONN_KEYS, STOR_TYPES


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required if required is not None
            else list(properties)}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
TIME = {"type": "string", "format": "date-time", "nullable": True}

CONN = _object({
    "storType": {"type": "string", "enum": list(STOR_TYPES)},
    "connConfig": {"type": "array", "items": _object({"key": {"type": "string", "enum": list(CONN_KEYS)},
                                                      "value": STRING})},
})
PLAN_REQUEST = _object({
    "name": STRING,
    "type": {"type": "string", "enum": ["migration"], "default": "migration"},
    "sourceConn": CONN,
    "destConn": CONN,
    "remainSource": {"type": "boolean", "default": True},
    "filter": _object({"prefix": STRING}, []),
    "policyId": {"type": "string", "description": "a policy's id: the plan runs on its schedule (a copy, taken now)"},
    "policyEnabled": {"type": "boolean", "default": False,
                      "description": "run on the policy's schedule; false: the plan runs on demand only"},
}, ["name", "sourceConn", "destConn"])
# What a plan answer shows of a connection: where, never a credential (access and security are never echoed).
CONN_VIEW = _object({
    "storType": {"type": "string", "enum": list(STOR_TYPES)},
    "connConfig": {"type": "array", "items": _object({
        "key": {"type": "string", "enum": ["endpoint", "bucketname", "region"]}, "value": STRING})},
})
PLAN = _object({
    "id": STRING, "name": STRING, "type": STRING, "tenantId": STRING, "sourceConn": CONN_VIEW, "destConn": CONN_VIEW,
    "remainSource": {"type": "boolean"}, "filter": _object({"prefix": STRING}, []), "createdAt": TIME,
    "policyId": STRING, "policyName": STRING, "policyEnabled": {"type": "boolean"},
    "schedule": _object({"cron": STRING, "timeZone": STRING}),
}, ["id", "name", "type", "tenantId", "sourceConn", "destConn", "remainSource", "filter", "createdAt", "policyId",
    "policyName", "policyEnabled"])
SCHEDULE = _object({
    "type": {"type": "string", "enum": ["cron"], "default": "cron"},
    "tiggerProperties": {"type": "string", "description": "Gelato's cron (the key's spelling is Gelato's): second "
                         "minute hour day-of-month month [day-of-week], or @hourly, @daily, ...; the seconds must be "
                         "one value (runs start by the minute)"},
    "timeZone": {"type": "string", "default": "UTC", "description": "the IANA zone the schedule is read in"},
}, ["tiggerProperties"])
POLICY_REQUEST = _object({"name": STRING, "description": STRING, "tenant": STRING, "schedule": SCHEDULE},
                         ["name", "schedule"])
POLICY = _object({"id": STRING, "name": STRING, "tenant": STRING, "description": STRING, "schedule": SCHEDULE})
JOB = _object({
    "id": STRING, "type": STRING, "planName": STRING, "planId": STRING, "sourceLocation": STRING,
    "destLocation": STRING,
    "status": {"type": "string", "enum": ["pending", "running", "aborting", "suspended", "succeeded", "failed",
                                          "aborted", "cancelled"]},
    "createTime": TIME, "endTime": TIME, "totalCapacity": INTEGER, "passedCapacity": INTEGER, "totalCount": INTEGER,
    "passedCount": INTEGER, "progress": INTEGER, "timeRequired": INTEGER,
})
ERROR = _object({"code": INTEGER, "message": STRING})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {400: "bad request: the message names the field", 401: "no bearer token, or one not accepted",
               403: "RBAC does not allow the caller this on the tenant's namespace", 404: "no such plan or job",
               409: "the job has already ended, or the policy is used by a plan: the message says which"}
    return {str(code): _json(ERROR, meaning[code]) for code in (401, 403, *codes)}


def _path_parameters(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": STRING} for name in names]


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "datamover Gelato-compatible API", "version": "v1",
             "description": "A thin facade over MigrationPlan and MigrationJob objects; a tenant is a namespace."},
    "components": {"securitySchemes": {"kubernetes": {"type": "http", "scheme": "bearer"}}},
    "security": [{"kubernetes": []}],
    "paths": {
        "/v1/{tenantId}/plans": {
            "parameters": _path_parameters("tenantId"),
            "post": {"summary": "create a plan (its credentials go into Secrets it owns)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": PLAN_REQUEST}}},
                     "responses": {"200": _json(_object({"plan": PLAN}), "the plan"), **_errors(400)}},
            "get": {"summary": "list the tenant's plans",
                    "responses": {"200": _json(_object({"plans": {"type": "array", "items": PLAN}}), "the plans"),
                                  **_errors(400)}},
        },
        "/v1/{tenantId}/plans/{planId}": {
            "parameters": _path_parameters("tenantId", "planId"),
            "get": {"summary": "one plan", "responses": {"200": _json(_object({"plan": PLAN}), "the plan"),
                                                         **_errors(400, 404)}},
            "delete": {"summary": "delete a plan, its Secrets and its jobs (running ones are aborted first)",
                       "responses": {"200": _json(_object({}), "deleted"), **_errors(400, 404)}},
        },
        "/v1/{tenantId}/plans/{planId}/run": {
            "parameters": _path_parameters("tenantId", "planId"),
            "post": {"summary": "run a plan now: a new job",
                     "responses": {"200": _json(_object({"jobId": STRING}), "the new job's id"),
                                   **_errors(400, 404)}},
        },
        "/v1/{tenantId}/policies": {
            "parameters": _path_parameters("tenantId"),
            "post": {"summary": "create a schedule policy (a plan names it by policyId)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": POLICY_REQUEST}}},
                     "responses": {"200": _json(_object({"policy": POLICY}), "the policy"), **_errors(400)}},
            "get": {"summary": "list the tenant's policies",
                    "responses": {"200": _json(_object({"policies": {"type": "array", "items": POLICY}}),
                                               "the policies"), **_errors(400)}},
        },
        "/v1/{tenantId}/policies/{policyId}": {
            "parameters": _path_parameters("tenantId", "policyId"),
            "get": {"summary": "one policy", "responses": {"200": _json(_object({"policy": POLICY}), "the policy"),
                                                           **_errors(400, 404)}},
            "delete": {"summary": "delete a policy no plan uses",
                       "responses": {"200": _json(_object({}), "deleted"), **_errors(400, 404, 409)}},
        },
        "/v1/{tenantId}/jobs": {
            "parameters": _path_parameters("tenantId"),
            "get": {"summary": "list the tenant's jobs",
                    "responses": {"200": _json(_object({"jobs": {"type": "array", "items": JOB}}), "the jobs"),
                                  **_errors(400)}},
        },
        "/v1/{tenantId}/jobs/{jobId}": {
            "parameters": _path_parameters("tenantId", "jobId"),
            "get": {"summary": "one job, with its progress",
                    "responses": {"200": _json(_object({"job": JOB}), "the job"), **_errors(400, 404)}},
        },
        "/v1/{tenantId}/jobs/{jobId}/abort": {
            "parameters": _path_parameters("tenantId", "jobId"),
            "post": {"summary": "abort a job; answers its final phase, or its phase when the bounded wait ends",
                     "responses": {"200": _json(_object({"Id": STRING, "Status": JOB["properties"]["status"]}),
                                                "aborted, cancelled (nothing was written yet), or still aborting"),
                                   **_errors(400, 404, 409)}},
        },
        "/openapi.json": {
            "get": {"summary": "this document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3"),
                                                              **_errors()}},
        },
    },
}
