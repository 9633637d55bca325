"""kopf handlers for MigrationPlans: create each due run as a MigrationJob, apply the concurrency policy and the
history limits, and keep the plan's status (recent runs, next due time) current.

Registered in the same operator as handlers.py (main.py imports both) and built the same way: kopf indices hold the
plans and their runs, every event of either puts the plan's key on a work queue, and a reconciler decides with the
pure plans.decide() and carries it out in a thread (the API client blocks). Time is the trigger only for the
next due run: a delayed re-queue at that instant, not a sleeping task per plan. A run's name holds its due minute,
so a restarted operator that decides the same run again meets a conflict, not a duplicate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from datamover import kubeapi, plans
from datamover.api import GROUP, PLURAL, VERSION, SpecError
from datamover.controller import handlers
from datamover.controller.workqueue import WorkQueue

log = logging.getLogger("datamover.operator.plans")

RECONCILERS = 2
# A plan is looked at again at least this often, due or not: a safety net for a missed event, not a poll.
RESYNC_SECONDS = 300.0
# Wake a little after the due instant, so that the clock read then is past it.
WAKE_MARGIN_SECONDS = 0.2

Key = tuple[str, str]  # (namespace, name) of a MigrationPlan


PLANS = kubeapi.Resource(f"{GROUP}/{VERSION}", plans.PLAN_PLURAL)


def _api() -> kubeapi.Client:
    return handlers._api()  # the operator's one connection pool


def _parse_time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def reconcile(plan: Mapping[str, Any], run_bodies: list[Mapping[str, Any]], now: dt.datetime) -> plans.PlanDecision:
    """One step for one plan: create, delete, write status; returns what was decided (next_time: when to wake)."""
    meta = plan["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = plan.get("status") or {}
    runs = [plans.run_of(body) for body in run_bodies]
    created = _parse_time(meta.get("creationTimestamp")) or now
    try:
        spec = plans.PlanSpec.from_spec(plan.get("spec") or {})
    except SpecError as error:
        decision = plans.PlanDecision(last_schedule_time=_parse_time(status.get("lastScheduleTime")))
        _write_status(plan, plans.plan_status(None, runs, decision, int(meta.get("generation") or 0), str(error)))
        return decision
    decision = plans.decide(spec, runs, created, _parse_time(status.get("lastScheduleTime")), now)
    for run in decision.delete:
        log.info("event=plan-run-delete plan=%s/%s run=%s", namespace, name, run)
        _delete_run(namespace, run)
    if decision.skipped is not None:
        log.info("event=plan-run-skipped plan=%s/%s due=%s policy=Forbid", namespace, name,
                 plans.rfc3339(decision.skipped))
    if decision.create is not None:
        run_name = plans.run_name(name, decision.create)
        _create_run(plans.run_manifest(plan, run_name, decision.create))
        log.info("event=plan-run plan=%s/%s run=%s due=%s", namespace, name, run_name, plans.rfc3339(decision.create))
        runs.append(plans.Run(run_name, None, now, decision.create))
    gone = set(decision.delete)
    _write_status(plan, plans.plan_status(spec, [r for r in runs if r.name not in gone], decision,
                                          int(meta.get("generation") or 0)))
    return decision


def _create_run(manifest: dict[str, Any]) -> None:
    try:
        _api().create(kubeapi.MIGRATION_JOBS, manifest["metadata"]["namespace"], manifest)
    except kubeapi.ApiError as error:
        if error.status != 409:  # made already (a restart, or an earlier step): the name is the idempotency key
            raise


def _delete_run(namespace: str, name: str) -> None:
    """Delete a run; its finalizer aborts it cleanly first if it is still going."""
    try:
        _api().delete(kubeapi.MIGRATION_JOBS, namespace, name, propagation_policy="Background")
    except kubeapi.ApiError as error:
        if error.status != 404:
            raise


def _write_status(plan: Mapping[str, Any], status: dict[str, Any]) -> None:
    current = plan.get("status") or {}
    patch = {k: v for k, v in status.items() if current.get(k) != v}
    if not patch:
        return
    meta = plan["metadata"]
    try:
        _api().patch(PLANS, meta["namespace"], meta["name"], {"status": patch}, content_type=kubeapi.MERGE_PATCH,
                     subresource="status")
    except kubeapi.ApiError as error:
        if error.status != 404:
            raise


class PlanController:
    """The plans' queue and reconcilers; lives on kopf's event loop."""

    def __init__(self) -> None:
        self.queue: WorkQueue[Key] = WorkQueue()
        self.pool = concurrent.futures.ThreadPoolExecutor(RECONCILERS, thread_name_prefix="plans")
        self.plans: Mapping[Key, Any] = {}  # kopf indices, bound on the first event
        self.runs: Mapping[Key, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        self.plans, self.runs = kwargs["migrationplan_index"], kwargs["plan_run_index"]

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._reconciler(), name=f"plan-reconciler-{i}")
                      for i in range(RECONCILERS)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _reconciler(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self.queue.get()
            try:
                await self._step(loop, key)
            except asyncio.CancelledError:
                raise
            except kubeapi.ApiError as error:
                log.warning("event=plan-reconcile-error plan=%s/%s status=%s reason=%s", *key, error.status,
                            error.reason)
                self.queue.add_after(key, 2.0)
            except Exception:
                log.exception("event=plan-reconcile-bug plan=%s/%s", *key)
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)

    async def _step(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        if not handlers.CONTROLLER.active:
            self.queue.add_after(key, 2.0)  # a paused replica (kopf peering) leaves plans to the active one
            return
        store = self.plans.get(key)
        plan = next(iter(store), None) if store is not None else None
        if plan is None or plan["metadata"].get("deletionTimestamp"):
            self.queue.forget(key)
            return
        runs = list(self.runs.get(key) or ())
        now = dt.datetime.now(dt.UTC)
        decision = await loop.run_in_executor(self.pool, reconcile, plan, runs, now)
        delay = RESYNC_SECONDS
        if decision.next_time is not None:
            delay = min(delay, max(0.0, (decision.next_time - dt.datetime.now(dt.UTC)).total_seconds())
                        + WAKE_MARGIN_SECONDS)
        self.queue.add_after(key, delay)


CONTROLLER = PlanController()


def _key(namespace: str | None, name: str | None) -> Key:
    return (str(namespace), str(name))


@kopf.index(GROUP, VERSION, plans.PLAN_PLURAL)
async def migrationplan_index(body: kopf.Body, namespace: str | None, name: str | None,
                              **_: Any) -> dict[Key, dict[str, Any]]:
    """Every MigrationPlan as last seen."""
    return {_key(namespace, name): copy.deepcopy(dict(body))}


@kopf.index(GROUP, VERSION, PLURAL, labels={plans.LABEL_PLAN: kopf.PRESENT})
async def plan_run_index(body: kopf.Body, namespace: str | None, labels: Mapping[str, str],
                         **_: Any) -> dict[Key, dict[str, Any]]:
    """The runs of each plan (MigrationJobs labelled with it): only what the plan controller reads of them."""
    meta = body.get("metadata") or {}
    return {_key(namespace, labels[plans.LABEL_PLAN]): {
        "metadata": {k: meta.get(k) for k in ("name", "creationTimestamp", "annotations")},
        "status": {k: (body.get("status") or {}).get(k) for k in ("phase", "completionTime")},
    }}


@kopf.on.event(GROUP, VERSION, plans.PLAN_PLURAL)
async def migrationplan_event(event: Mapping[str, Any], namespace: str | None, name: str | None,
                              **kwargs: Any) -> None:
    """A plan was created or changed (schedule, suspend, ...): decide again now."""
    CONTROLLER.bind(kwargs)
    key = _key(namespace, name)
    if event.get("type") == "DELETED":
        CONTROLLER.queue.forget(key)
        return
    CONTROLLER.queue.add(key)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={plans.LABEL_PLAN: kopf.PRESENT})
async def plan_run_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    """A run changed phase (or went): the plan's status and, under Forbid, its next run depend on it."""
    CONTROLLER.bind(kwargs)
    CONTROLLER.queue.add(_key(namespace, labels[plans.LABEL_PLAN]))


@kopf.on.startup()
async def start_plan_reconcilers(**_: Any) -> None:
    CONTROLLER.start()


@kopf.on.cleanup()
async def stop_plan_reconcilers(**_: Any) -> None:
    await CONTROLLER.stop()
