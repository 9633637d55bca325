"""The Gelato-compatible REST facade as an aiohttp application: each route authenticates the caller, asks the API
server whether that caller may do the same thing to the CRs, then does it with the facade's own identity.

The CRs are the only state: a request reads or writes MigrationPlans, MigrationJobs and Secrets and answers from what
the API server returned. Authentication is a TokenReview of the bearer token, authorization a SubjectAccessReview
for that user on the tenant's namespace, per resource and verb the route touches, so the facade never grants more
than RBAC does. The API client blocks, so API calls run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiohttp import web

from datamover import kubeapi
from datamover.api import GROUP, PLURAL, VERSION, MigrationStatus
from datamover.facade import gelato, openapi
from datamover.kubeapi import MIGRATION_JOBS, ApiError
from datamover.plans import PLAN_PLURAL, run_manifest

log = logging.getLogger("datamover.api")

PLANS_API = kubeapi.Resource(f"{GROUP}/{VERSION}", PLAN_PLURAL)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# How often a waiting abort looks at its job again.
ABORT_LOOK_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
    """--tenant-namespace and --abort-wait-seconds."""

    tenant_namespace: str = "{tenant}"  # a tenant's namespace; {tenant} is replaced by the tenantId
    abort_wait_seconds: float = 30.0  # how long an abort waits for the job's final phase before answering


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a bearer token says the caller is (TokenReview's status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _api() -> kubeapi.Client:
    return kubeapi.shared()  # one connection pool for every request


async def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


def _answer(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def authenticate(request: web.Request) -> Caller:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPError(401, "Authorization: a Kubernetes bearer token is required (Authorization: Bearer <token>)")
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token.strip()}}
    result = await _call(_api().create, kubeapi.TOKEN_REVIEWS, None, review)
    status = result.get("status") or {}
    user = status.get("user") or {}
    if not status.get("authenticated") or not user:
        raise HTTPError(401, "Authorization: the bearer token was not accepted by the Kubernetes API server")
    return Caller(str(user.get("username")), str(user.get("uid") or ""), tuple(user.get("groups") or ()),
                  dict(user.get("extra") or {}))


async def authorize(caller: Caller, namespace: str, *checks: tuple[str, str, str]) -> None:
    """403 unless RBAC lets `caller` do each (verb, api group, resource) in `namespace`."""
    for verb, group, resource in checks:
        spec: dict[str, Any] = {"user": caller.username, "groups": list(caller.groups),
                                "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                                       "resource": resource}}
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = dict(caller.extra)
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        result = await _call(_api().create, kubeapi.SUBJECT_ACCESS_REVIEWS, None, review)
        if not (result.get("status") or {}).get("allowed"):
            raise HTTPError(403, f"user {caller.username!r} may not {verb} {resource} in namespace {namespace!r}")


PLANS = ("datamover.io", PLAN_PLURAL)
JOBS = ("datamover.io", PLURAL)
SECRETS = ("", "secrets")
POLICIES = ("", "configmaps")  # a Gelato policy is a ConfigMap (gelato.new_policy): RBAC on ConfigMaps governs it


def _check(verb: str, what: tuple[str, str]) -> tuple[str, str, str]:
    return (verb, *what)


class Facade:
    """The routes; one per Gelato operation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def namespace(self, tenant: str) -> str:
        namespace = self.settings.tenant_namespace.replace("{tenant}", tenant)
        if not DNS_LABEL.match(namespace):
            raise HTTPError(400, f"tenantId: {tenant!r} does not name a namespace (it maps to {namespace!r}, "
                                 "which is not a DNS label)")
        return namespace

    async def _enter(self, request: web.Request, *checks: tuple[str, str, str]) -> tuple[str, Caller]:
        caller = await authenticate(request)
        namespace = self.namespace(request.match_info["tenantId"])
        await authorize(caller, namespace, *checks)
        return namespace, caller

    async def _get(self, namespace: str, resource: kubeapi.Resource, name: str, what: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], await _call(_api().get, resource, namespace, name))
        except ApiError as error:
            if error.status == 404:
                raise HTTPError(404, f"{what} {name!r} not found") from None
            raise

    async def _policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The policy ConfigMap `name`, or None if there is none (another ConfigMap of that name is none either)."""
        try:
            config_map = cast(dict[str, Any], await _call(_api().get, kubeapi.CONFIG_MAPS, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return config_map if gelato.is_policy(config_map) else None

    async def _plan_names(self, namespace: str, caller: Caller) -> dict[str, str]:
        """Gelato names of the plans, if the caller may list them (else jobs show the plan id)."""
        try:
            await authorize(caller, namespace, _check("list", PLANS))
        except HTTPError:
            return {}
        listed = await _call(_api().list, PLANS_API, namespace)
        return {p["metadata"]["name"]: gelato.plan_view(p, "")["name"] for p in listed.get("items") or []}

    # -- plans ---------------------------------------------------------------------------------------------------

    async def create_plan(self, request: web.Request) -> web.Response:
        namespace, caller = await self._enter(request, _check("create", PLANS), _check("create", SECRETS))
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            raise HTTPError(400, "body: not valid JSON") from None
        try:
            policy_id = gelato.requested_policy(body)
            policy = None
            if policy_id is not None:
                await authorize(caller, namespace, _check("get", POLICIES))
                policy = await self._policy(namespace, policy_id)
            new = gelato.new_plan(body, namespace, policy)
        except gelato.BadRequest as error:
            raise HTTPError(400, str(error)) from None
        plan = await _call(_api().create, PLANS_API, namespace, new.plan)
        try:
            for secret in new.secrets:
                await _call(_api().create, kubeapi.SECRETS, namespace, gelato.owned_by(secret, plan))
        except ApiError:
            # Nothing half-created: the plan goes, and with it (garbage collection) any Secret already made.
            await _call(_api().delete, PLANS_API, namespace, plan["metadata"]["name"],
                        propagation_policy="Foreground")
            raise
        log.info("event=plan-created namespace=%s plan=%s", namespace, plan["metadata"]["name"])
        return _answer({"plan": gelato.plan_view(plan, request.match_info["tenantId"])})

    async def list_plans(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("list", PLANS))
        listed = await _call(_api().list, PLANS_API, namespace)
        tenant = request.match_info["tenantId"]
        return _answer({"plans": [gelato.plan_view(p, tenant) for p in listed.get("items") or []]})

    async def get_plan(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("get", PLANS))
        plan = await self._get(namespace, PLANS_API, request.match_info["planId"], "plan")
        return _answer({"plan": gelato.plan_view(plan, request.match_info["tenantId"])})

    async def delete_plan(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("delete", PLANS))
        name = request.match_info["planId"]
        try:
            await _call(_api().delete, PLANS_API, namespace, name, propagation_policy="Background")
        except ApiError as error:
            if error.status == 404:
                raise HTTPError(404, f"plan {name!r} not found") from None
            raise
        return _answer({})

    async def run_plan(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("get", PLANS), _check("create", JOBS))
        plan = await self._get(namespace, PLANS_API, request.match_info["planId"], "plan")
        job = await _call(_api().create, MIGRATION_JOBS, namespace, run_manifest(plan, None, None))
        log.info("event=plan-run namespace=%s plan=%s job=%s", namespace, plan["metadata"]["name"],
                 job["metadata"]["name"])
        return _answer({"jobId": job["metadata"]["name"]})

    # -- policies (a Gelato schedule; plans copy it when created, so a policy in use cannot be deleted) ----------

    async def create_policy(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("create", POLICIES))
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            raise HTTPError(400, "body: not valid JSON") from None
        try:
            config_map = gelato.new_policy(body, namespace)
        except gelato.BadRequest as error:
            raise HTTPError(400, str(error)) from None
        created = await _call(_api().create, kubeapi.CONFIG_MAPS, namespace, config_map)
        log.info("event=policy-created namespace=%s policy=%s", namespace, created["metadata"]["name"])
        return _answer({"policy": gelato.policy_view(created, request.match_info["tenantId"])})

    async def list_policies(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("list", POLICIES))
        listed = await _call(_api().list, kubeapi.CONFIG_MAPS, namespace,
                             label_selector=f"{gelato.LABEL_POLICY}={gelato.POLICY}")
        items = listed.get("items") or []
        tenant = request.match_info["tenantId"]
        return _answer({"policies": [gelato.policy_view(p, tenant) for p in items]})

    async def get_policy(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("get", POLICIES))
        name = request.match_info["policyId"]
        policy = await self._policy(namespace, name)
        if policy is None:
            raise HTTPError(404, f"policy {name!r} not found")
        return _answer({"policy": gelato.policy_view(policy, request.match_info["tenantId"])})

    async def delete_policy(self, request: web.Request) -> web.Response:
        namespace, _ = await self._enter(request, _check("delete", POLICIES), _check("list", PLANS))
        name = request.match_info["policyId"]
        if await self._policy(namespace, name) is None:
            raise HTTPError(404, f"policy {name!r} not found")
        users = await _call(_api().list, PLANS_API, namespace, label_selector=f"{gelato.LABEL_POLICY}={name}")
        if users.get("items"):
            plans = ", ".join(sorted(p["metadata"]["name"] for p in users["items"]))
            raise HTTPError(409, f"policy {name!r} is used by plan(s) {plans}")
        try:
            await _call(_api().delete, kubeapi.CONFIG_MAPS, namespace, name)
        except ApiError as error:
            if error.status == 404:
                raise HTTPError(404, f"policy {name!r} not found") from None
            raise
        return _answer({})

    # -- jobs ----------------------------------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        namespace, caller = await self._enter(request, _check("list", JOBS))
        listed = await _call(_api().list, MIGRATION_JOBS, namespace)
        names = await self._plan_names(namespace, caller)
        return _answer({"jobs": [gelato.job_view(j, names) for j in listed.get("items") or []]})

    async def get_job(self, request: web.Request) -> web.Response:
        namespace, caller = await self._enter(request, _check("get", JOBS))
        job = await self._get(namespace, MIGRATION_JOBS, request.match_info["jobId"], "job")
        return _answer({"job": gelato.job_view(job, await self._plan_names(namespace, caller))})

    async def abort_job(self, request: web.Request) -> web.Response:
        """Set spec.abort, then answer with the final phase (aborted, or cancelled if nothing was written yet) once
        the operator reaches it, or with the phase at the end of the bounded wait."""
        namespace, _ = await self._enter(request, _check("get", JOBS), _check("patch", JOBS))
        name = request.match_info["jobId"]
        job = await self._get(namespace, MIGRATION_JOBS, name, "job")
        phase = MigrationStatus.of(job).phase
        if phase is not None and phase.terminal:
            raise HTTPError(409, f"job {name!r} has already ended: {phase.value}")
        try:
            await _call(_api().patch, MIGRATION_JOBS, namespace, name, {"spec": {"abort": True}},
                        content_type=kubeapi.MERGE_PATCH)
        except ApiError as error:
            if error.status == 422:  # it ended between the read and the patch (the CRD refuses abort then)
                ended = MigrationStatus.of(await self._get(namespace, MIGRATION_JOBS, name, "job")).phase
                raise HTTPError(409, f"job {name!r} has already ended: {ended}") from None
            raise
        deadline = time.monotonic() + self.settings.abort_wait_seconds
        while True:
            status = MigrationStatus.of(await self._get(namespace, MIGRATION_JOBS, name, "job"))
            if status.final or time.monotonic() >= deadline:
                break
            await asyncio.sleep(ABORT_LOOK_SECONDS)
        log.info("event=abort namespace=%s job=%s phase=%s", namespace, name, status.phase)
        return _answer({"Id": name, "Status": str(status.phase.value if status.phase else "pending")})

    async def openapi_document(self, request: web.Request) -> web.Response:
        await authenticate(request)
        return _answer(openapi.DOCUMENT)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as Gelato-style JSON {"code", "message"}; an API server error is passed on with its status."""
    try:
        return await handler(request)
    except HTTPError as error:
        return _answer({"code": error.status, "message": error.message}, error.status)
    except ApiError as error:
        # The API server's 422 (its schema refused a value, naming the field) is a bad request to a Gelato client.
        status = 400 if error.status == 422 else error.status if error.status in (400, 403, 404, 409) else 502
        return _answer({"code": status, "message": error.message or error.reason}, status)
    except web.HTTPException as error:
        return _answer({"code": error.status, "message": error.reason}, error.status)


def application(settings: Settings) -> web.Application:
    facade = Facade(settings)
    app = web.Application(middlewares=[errors])
    app.router.add_routes([
        web.post("/v1/{tenantId}/plans", facade.create_plan),
        web.get("/v1/{tenantId}/plans", facade.list_plans, allow_head=False),
        web.get("/v1/{tenantId}/plans/{planId}", facade.get_plan, allow_head=False),
        web.delete("/v1/{tenantId}/plans/{planId}", facade.delete_plan),
        web.post("/v1/{tenantId}/plans/{planId}/run", facade.run_plan),
        web.post("/v1/{tenantId}/policies", facade.create_policy),
        web.get("/v1/{tenantId}/policies", facade.list_policies, allow_head=False),
        web.get("/v1/{tenantId}/policies/{policyId}", facade.get_policy, allow_head=False),
        web.delete("/v1/{tenantId}/policies/{policyId}", facade.delete_policy),
        web.get("/v1/{tenantId}/jobs", facade.list_jobs, allow_head=False),
        web.get("/v1/{tenantId}/jobs/{jobId}", facade.get_job, allow_head=False),
        web.post("/v1/{tenantId}/jobs/{jobId}/abort", facade.abort_job),
        web.get("/openapi.json", facade.openapi_document, allow_head=False),
    ])
    return app
