"""kopf handlers: follow every MigrationJob from watch events, ask decisions.decide() what to do, and do it.

There is no thread or task per job, so hundreds of jobs cost what their events cost. kopf's indices keep the latest
MigrationJobs, their Jobs and their worker pods in memory, filled from watch streams before any handler runs (so a
restarted operator sees every Job it created before it decides anything). Each event of one of them puts the owning
MigrationJob's key on one work queue; a fixed set of reconcilers takes keys off it, observes from the indices (no
API read) and carries out the decision in a small thread pool (the API client blocks). Time is a trigger only
where time itself is the cause: the abort grace period and a slow resync are delayed re-queues, not sleeping threads.

Jobs over `--max-concurrent-jobs` stay `pending` with a `Queued` condition that says their place, and start in
creation order as slots free. Status is written with merge patches to the status subresource; spec and metadata are
never written (GitOps tools see no drift), and kopf's own bookkeeping lives in status.kopf.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import datetime as dt
import functools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from datamover import kubeapi
from datamover.api import (
    FINALIZER,
    GROUP,
    HEARTBEAT_TIMEOUT_SECONDS,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGER,
    PLURAL,
    VERSION,
    Condition,
    Location,
    MigrationSpec,
    MigrationStatus,
    Mode,
    Phase,
    SpecError,
    job_plan,
    now_rfc3339,
    open_upload_status,
    parse_time,
    plan_status,
    progress_status,
    upload_intent_status,
    worker_reports,
)
from datamover.backends import open_store
from datamover.controller import metrics, notify, resources
from datamover.controller.decisions import (
    ADMITTED,
    Decision,
    MissingReference,
    Observation,
    QueueEntry,
    QueuePlace,
    admissions,
    decide,
    queued_message,
)
from datamover.controller.peering import PEERING_GROUP, PEERING_VERSION, PeeringObject, is_active
from datamover.controller.workqueue import WorkQueue
from datamover.engine import close_leftovers
from datamover.kubeapi import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError
from datamover.locations import store_config

log = logging.getLogger("datamover.operator")

WORKER_SETTINGS = resources.WorkerSettings.from_env()
# Reconcilers working at once; each holds a thread of the pool only while it talks to the API server.
RECONCILERS = 8
# A job that is not final is looked at again this often even if nothing wakes it: a safety net, not a poll (a look
# that finds nothing new sends no request).
RESYNC_SECONDS = 60.0
# How often queued jobs are told their new place; the place is rewritten only when it changed.
QUEUE_REFRESH_SECONDS = 10.0
# A running job's status.progress (the workers' counters summed, for printer columns) is rewritten at most this
# often: each worker already reports every 2 s, and mirroring every report cost a patch per report, which at hundreds
# of running jobs was most of the operator's API requests. A phase change always carries the latest sums.
PROGRESS_MIRROR_SECONDS = 5.0
# How often a deletion looks again whether its workers have stopped.
FINALIZE_LOOK_SECONDS = 0.5
# How often a replica under kopf peering reads the peering objects to know whether it is the active one.
PEERING_LOOK_SECONDS = 2.0
# Default of --max-concurrent-jobs: MigrationJobs whose workers run at once (0 = no limit).
DEFAULT_MAX_CONCURRENT_JOBS = 20

Key = tuple[str, str]  # (namespace, name) of a MigrationJob


def _api() -> kubeapi.Client:
    """The operator's one client (one connection pool, so one TLS connection per thread at most, not per request)."""
    return kubeapi.shared()


def _not_found(error: ApiError) -> bool:
    return error.status == 404


def _read_secret(namespace: str, name: str) -> dict[str, str]:
    secret = _api().get(kubeapi.SECRETS, namespace, name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _reference_error(namespace: str, spec: MigrationSpec) -> MissingReference | None:
    """The first Secret or key the spec names that is not there, said so that a person can fix it."""
    for _, side, location in spec.credentialed_locations():
        if location.secret_name is None:
            continue
        try:
            data = _read_secret(namespace, location.secret_name)
        except ApiError as error:
            if _not_found(error):
                return MissingReference("SecretNotFound", f"spec.{side}.credentialsSecretRef: Secret "
                                                          f"{namespace}/{location.secret_name} not found")
            raise
        wanted = location.secret_keys
        for key in wanted.required:
            if not data.get(key):
                return MissingReference("SecretKeyMissing", f"spec.{side}.credentialsSecretRef: Secret "
                                                            f"{namespace}/{location.secret_name} has no key {key!r}")
        if wanted.one_of and not any(data.get(key) for key in wanted.one_of):
            keys = " or ".join(repr(key) for key in wanted.one_of)
            return MissingReference("SecretKeyMissing", f"spec.{side}.credentialsSecretRef: Secret "
                                                        f"{namespace}/{location.secret_name} has neither {keys}")
        if lacking := wanted.missing_companion(data):
            return MissingReference("SecretKeyMissing", f"spec.{side}.credentialsSecretRef: Secret "
                                                        f"{namespace}/{location.secret_name} has no key "
                                                        f"{lacking[0]!r} (needed with {lacking[1]!r})")
    if spec.notify.webhook_secret is not None:
        _, problem = _webhook_url(namespace, spec)
        if problem is not None:
            return problem
    return None


def _webhook_url(namespace: str, spec: MigrationSpec) -> tuple[str, MissingReference | None]:
    """spec.notify's webhook URL from its Secret, or what is wrong with the reference (never quoting the URL)."""
    name, key = spec.notify.webhook_secret, spec.notify.webhook_key
    field_name = "spec.notify.webhook.urlSecretRef"
    try:
        url = _read_secret(namespace, str(name)).get(key, "")
    except ApiError as error:
        if _not_found(error):
            return "", MissingReference("SecretNotFound", f"{field_name}: Secret {namespace}/{name} not found")
        raise
    if not url:
        return "", MissingReference("SecretKeyMissing", f"{field_name}: Secret {namespace}/{name} has no key {key!r}")
    problem = notify.url_problem(url)
    if problem is not None:
        return "", MissingReference("InvalidSpec", f"{field_name}: the value of key {key!r} in Secret "
                                                   f"{namespace}/{name} {problem}")
    return url, None


def _notify(body: Mapping[str, Any]) -> None:
    """Call the job's webhook about its final phase and record the outcome in status (runs on the notifier pool)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = MigrationSpec.from_spec(body.get("spec") or {})
    status = MigrationStatus.of(body)
    url, problem = _webhook_url(namespace, spec)
    if problem is not None:
        delivered, attempts, error, reason = False, 0, problem.message, problem.reason
    else:
        delivered, attempts, error = notify.deliver(url, notify.cloud_event(body))
        reason = "Delivered" if delivered else "WebhookFailed"
    message = (f"webhook called about phase {status.phase}" if delivered
               else f"webhook not reached after {attempts} attempt(s): {error}" if attempts else error)
    generation = int(meta.get("generation") or 0)
    notified = Condition("Notified", delivered, reason, message, generation, now_rfc3339())
    conditions = [c.to_status() for c in status.conditions if c.type != "Notified"] + [notified.to_status()]
    log.info("event=notify job=%s/%s delivered=%s attempts=%d error=%r", namespace, name, delivered, attempts,
             error)
    try:
        _patch_status(namespace, name, {
            "notification": {"phase": str(status.phase), "delivered": delivered, "attempts": attempts,
                             "lastError": error, "time": now_rfc3339()},
            "conditions": conditions,
        })
    except ApiError as failure:
        if not _not_found(failure):
            raise
    if not delivered:
        _event(body, type="Warning", reason=reason, message=f"spec.notify: {message}")


# Webhook calls wait out their back-off here, never on a reconciler's thread.
_NOTIFIER = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="notify")


def _create(manifest: dict[str, Any]) -> None:
    """Create one owned object; an existing one (an earlier attempt, or a restart) is fine."""
    try:
        _api().create(_CHILD_KINDS[manifest["kind"]], manifest["metadata"]["namespace"], manifest)
    except ApiError as error:
        if error.status != 409:
            raise


_CHILD_KINDS = {"ServiceAccount": kubeapi.SERVICE_ACCOUNTS, "Role": kubeapi.ROLES, "RoleBinding": kubeapi.ROLE_BINDINGS,
                "Job": kubeapi.JOBS}


def _start_workers(body: Mapping[str, Any], spec: MigrationSpec) -> None:
    # The ServiceAccount, Role and RoleBinding do not depend on each other: created at once, they cost one round trip
    # on the way from a freed slot to the next job's Job instead of three.
    rbac = [_CHILD_CREATOR.submit(_create, m) for m in
            (resources.service_account(body), resources.role(body), resources.role_binding(body))]
    for future in rbac:
        future.result()
    # The Job goes last: its existence is what tells a restarted operator that the rest is there too.
    _create(resources.job(body, spec, WORKER_SETTINGS))


# Its own pool, not the reconcilers': a reconcile waiting on a task queued behind other reconciles could deadlock.
_CHILD_CREATOR = concurrent.futures.ThreadPoolExecutor(6, thread_name_prefix="children")


def _stop_workers(namespace: str, name: str, pods: list[str], *, suspended: bool, kill: bool) -> None:
    if not suspended:
        try:
            _api().patch(kubeapi.JOBS, namespace, resources.child_name(name), {"spec": {"suspend": True}},
                         content_type=STRATEGIC_MERGE_PATCH)
        except ApiError as error:
            if not _not_found(error):
                raise
    if kill:
        _delete_pods(namespace, pods)


def _delete_job(namespace: str, name: str) -> None:
    """Remove a suspended job's Job (its pods are gone already); a resume creates a new one."""
    try:
        _api().delete(kubeapi.JOBS, namespace, resources.child_name(name), propagation_policy="Background")
    except ApiError as error:
        if not _not_found(error):
            raise


def _delete_pods(namespace: str, pods: Iterable[str]) -> None:
    """Delete worker pods at once (no grace: they are past it, or frozen and would not act on SIGTERM)."""
    for pod in pods:
        try:
            _api().delete(kubeapi.PODS, namespace, pod, grace_period_seconds=0)
        except ApiError as error:
            if not _not_found(error):
                raise


def _janitor(body: Mapping[str, Any], spec: MigrationSpec) -> dict[str, Any]:
    """Close every upload the workers may have left: abort the recorded IDs, and list every intended key and abort
    the uploads of ours there (also those whose ID never reached status); returns the status.workers patch."""
    reports = worker_reports(body)
    leftovers = {index: r.open_uploads for index, r in reports.items() if r.open_uploads}
    intended = {index: r.upload_intents for index, r in reports.items() if r.upload_intents}
    if not leftovers and not intended:
        return {}
    namespace = body["metadata"]["namespace"]
    destination: Location = spec.destination
    credentials = _read_secret(namespace, destination.secret_name) if destination.secret_name else {}
    store = open_store(store_config(destination, credentials))
    cleanup = close_leftovers(store, [u for ups in leftovers.values() for u in ups],
                              [i for ins in intended.values() for i in ins])
    remaining = set(cleanup.still_open)
    unresolved = {intent for intent, _ in cleanup.unresolved}
    aborted = len(cleanup.closed) + len(cleanup.aborted)
    log.info("event=janitor job=%s/%s aborted=%d remaining=%d intents_unresolved=%d", namespace,
             body["metadata"]["name"], aborted, len(remaining), len(unresolved))
    if aborted or remaining or unresolved:
        left = len(remaining) + len(unresolved)
        _event(body, type="Warning" if left else "Normal", reason="UploadsAborted",
               message=f"aborted {aborted} multipart upload(s) the workers left open on {destination.describe()}"
               + (f"; {left} upload(s) or intended key(s) could not be cleaned up yet" if left else ""))
    patch: dict[str, Any] = {}
    for index in set(leftovers) | set(intended):
        entry: dict[str, Any] = {}
        if index in leftovers:
            entry["openUploads"] = [open_upload_status(u) for u in leftovers[index] if u in remaining]
        if index in intended:
            entry["uploadIntents"] = [upload_intent_status(i) for i in intended[index] if i in unresolved]
        patch[str(index)] = entry
    return patch


def _conditions(current: MigrationStatus, phase: Phase, reason: str, message: str, abort_reason: str,
                generation: int) -> tuple[Condition, ...]:
    """Kubernetes-style conditions, each saying what happened to it (kstatus reads Ready; kubectl waits on any).

    Ready: the migration succeeded. Complete: it reached a final phase. Failed: it failed, and why. AbortRequested:
    somebody asked it to stop (spec.abort, or deletion). Suspended: spec.suspend has stopped (or is stopping) it.
    """
    # A plan that succeeded says so (reason Planned) where a migration says Succeeded.
    final_reason = {Phase.SUCCEEDED: reason if reason == "Planned" else "Succeeded", Phase.ABORTED: "Aborted",
                    Phase.CANCELLED: "Cancelled"}
    wanted: dict[str, tuple[bool, str, str]] = {
        "Ready": (phase is Phase.SUCCEEDED, reason, message),
        "Complete": (phase.terminal, final_reason.get(phase, reason) if phase.terminal else "InProgress",
                     message if phase.terminal else f"phase {phase.value}: {message}"),
        "Failed": (phase is Phase.FAILED, reason if phase is Phase.FAILED else "NoFailure",
                   message if phase is Phase.FAILED else "no failure so far"),
        "AbortRequested": (bool(abort_reason), "AbortRequested" if abort_reason else "NotRequested",
                           f"abort requested by {abort_reason}" if abort_reason else "spec.abort is not set"),
        "Suspended": (phase is Phase.SUSPENDED, reason if phase is Phase.SUSPENDED else "NotSuspended",
                      message if phase is Phase.SUSPENDED else "spec.suspend is not set"),
    }
    now = now_rfc3339()
    result = []
    for kind, (truth, why, text) in wanted.items():
        old = current.condition(kind)
        flipped = old is None or old.status != truth
        result.append(Condition(kind, truth, why, text, generation,
                                now if flipped or old is None else old.last_transition_time or now))
    return tuple(result)


def _patch_status(namespace: str, name: str, status: Mapping[str, Any]) -> Mapping[str, Any]:
    return _api().patch(kubeapi.MIGRATION_JOBS, namespace, name, {"status": status}, content_type=MERGE_PATCH,
                        subresource="status")


def _event(body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    """Post a core/v1 Event on the MigrationJob (written here, not with kopf.event: reconcilers run outside the
    per-object context kopf's event poster needs)."""
    meta = body["metadata"]
    now = dt.datetime.now(dt.UTC)
    event = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MigrationJob", "name": meta["name"],
            "namespace": meta["namespace"], "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": os.environ.get("POD_ID") or MANAGER,
        "firstTimestamp": now.isoformat(),  # RFC 3339, as the kubernetes client wrote a datetime
        "lastTimestamp": now.isoformat(),
        "count": 1,
    }
    _EVENT_POSTER.submit(_post_event, event)


def _post_event(event: dict[str, Any]) -> None:
    try:
        _api().create(kubeapi.EVENTS, event["metadata"]["namespace"], event)
    except ApiError as error:
        # An Event is a courtesy: failing to post one must not stop or slow the reconcile that decided it.
        log.warning("event=event-post-failed job=%s/%s reason=%s status=%s", event["metadata"]["namespace"],
                    event["involvedObject"]["name"], event["reason"], error.status)


# Events go out from their own thread, in order, so that a reconcile's next status write never waits for one.
_EVENT_POSTER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="events")


def _abort_source(body: Mapping[str, Any], deleting: bool) -> str:
    if deleting or body.get("metadata", {}).get("deletionTimestamp"):
        return "MigrationJob deletion"
    return "spec.abort" if (body.get("spec") or {}).get("abort") else ""


def progress_behind(body: Mapping[str, Any]) -> bool:
    """Whether status.progress lags what the workers reported."""
    status = MigrationStatus.of(body)
    return bool(status.workers) and progress_status(status.workers) != status.progress


def _status_for(body: Mapping[str, Any], decision: Decision, deleting: bool, *,
                mirror_progress: bool = True) -> dict[str, Any]:
    """The merge patch that brings status to what `decision` says: only what changed (and status.progress only if
    `mirror_progress`, or with a new phase)."""
    status = MigrationStatus.of(body)
    generation = int(body["metadata"].get("generation") or 0)
    patch: dict[str, Any] = {}
    if status.observed_generation != generation:
        patch["observedGeneration"] = generation
    progress = progress_status(status.workers)
    phase = decision.phase
    if status.workers and progress != status.progress:
        patch["progress"] = progress
    plan = job_plan(status.workers)
    if plan is not None and plan_status(plan) != status.plan:
        patch["plan"] = plan_status(plan)
    if phase is None or (phase, decision.message, decision.reason) == (status.phase, status.message, status.reason):
        if not mirror_progress:
            patch.pop("progress", None)
        return patch
    patch["observedGeneration"] = generation
    patch.update(
        phase=phase.value,
        reason=decision.reason,
        message=decision.message,
        conditions=[c.to_status() for c in _conditions(status, phase, decision.reason, decision.message,
                                                        _abort_source(body, deleting), generation)],
    )
    now = now_rfc3339()
    if phase is Phase.RUNNING and not status.start_time:
        patch["startTime"] = now
    if phase in (Phase.ABORTING, Phase.CANCELLED) and not status.abort_requested_time:
        patch["abortRequestedTime"] = now
    if phase.terminal:
        patch["completionTime"] = now
    return patch


@dataclass(frozen=True)
class Children:
    """What the indices say about the objects a MigrationJob owns."""

    job_exists: bool = False
    job_suspended: bool = False
    job_complete: bool = False
    job_failed_message: str | None = None
    pods: tuple[str, ...] = ()  # worker pods not yet finished
    terminating: tuple[str, ...] = ()  # of those, the ones being deleted


def reconcile(body: Mapping[str, Any], children: Children, place: QueuePlace = ADMITTED, *, deleting: bool = False,
              heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS,
              mirror_progress: bool = True) -> tuple[Decision, Mapping[str, Any] | None]:
    """One step for one MigrationJob; returns what was decided and the object as written (if it was)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = MigrationStatus.of(body)
    try:
        spec = MigrationSpec.from_spec(body.get("spec") or {})
    except SpecError as error:
        invalid = Decision(Phase.FAILED, "InvalidSpec", str(error))
        if status.final:
            return Decision(), None
        written = _patch_status(namespace, name, _status_for(body, invalid, deleting))
        _event(body, type="Warning", reason=invalid.reason, message=invalid.message)
        return invalid, written

    reference_error = None
    finalized = FINALIZER in (meta.get("finalizers") or [])
    if not children.job_exists and status.phase is Phase.PENDING and place.admitted and not spec.abort:
        reference_error = _reference_error(namespace, spec)
    requested = status.abort_requested_time
    decision = decide(Observation(
        phase=status.phase,
        abort_requested=spec.abort or deleting,
        deleting=deleting,
        parallelism=spec.parallelism,
        grace_seconds=spec.abort_grace_period_seconds,
        now=dt.datetime.now(dt.UTC),
        abort_requested_at=parse_time(requested) if requested else None,
        reference_error=reference_error,
        queue=place,
        job_exists=children.job_exists,
        job_complete=children.job_complete,
        job_failed_message=children.job_failed_message,
        alive_pods=children.pods,
        terminating_pods=children.terminating,
        workers=status.workers,
        heartbeat_timeout=heartbeat_timeout,
        suspend_requested=spec.suspend and not deleting,
        plan=spec.mode is Mode.PLAN,
        move=not spec.remain_source,
    ))
    if decision.stop_job:
        _stop_workers(namespace, name, list(children.pods), suspended=children.job_suspended,
                      kill=decision.kill_pods)
    if decision.delete_job:
        _delete_job(namespace, name)
    if decision.restart_pods:
        log.warning("event=workers-unresponsive job=%s/%s pods=%s", namespace, name, ",".join(decision.restart_pods))
        _delete_pods(namespace, decision.restart_pods)
        _event(body, type="Warning", reason=decision.reason, message=decision.message)
    patch = _status_for(body, decision, deleting, mirror_progress=mirror_progress)
    # An Event says what happened: a new phase or reason. A queued job's new place is a status update, not news.
    phase_changed = "phase" in patch and (patch["phase"], patch["reason"]) != (status.phase, status.reason)
    if decision.run_janitor:
        workers_patch = _janitor(body, spec)
        if workers_patch:
            patch["workers"] = workers_patch
    result = _patch_status(namespace, name, patch) if patch else None
    if decision.phase is not None and phase_changed:
        log.info("event=phase job=%s/%s phase=%s reason=%s", namespace, name, decision.phase.value, decision.reason)
        event_type = "Warning" if decision.phase is Phase.FAILED else "Normal"
        _event(body, type=event_type, reason=decision.reason, message=decision.message)
    # The status goes first: with it the job no longer reads Queued, so kopf keeps the finalizer we add next.
    if decision.create_job and (finalized or _hold_finalizer(result or body)):
        _start_workers(body, spec)
    return decision, result


def _hold_finalizer(body: Mapping[str, Any]) -> bool:
    """Add our finalizer to an admitted job before its Job exists, so that deleting it always runs the janitor.

    kopf would add it too once it sees the new status, but only after a round trip through its own queue of watch
    events, which is slow while hundreds of jobs report progress; an admitted job should start at once. The patch
    holds only if nobody changed the object since `body` (resourceVersion test): otherwise its next event brings the
    next step. Returns whether the finalizer is in place.
    """
    meta = body["metadata"]
    finalizers = [*(meta.get("finalizers") or []), FINALIZER]
    try:
        _api().patch(kubeapi.MIGRATION_JOBS, meta["namespace"], meta["name"],
                     [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                      {"op": "add", "path": "/metadata/finalizers", "value": finalizers}],
                     content_type=JSON_PATCH)
    except ApiError as error:
        if error.status in (404, 409, 422):
            return False
        raise
    return True


def _read_migrationjob(key: Key) -> Mapping[str, Any] | None:
    try:
        return _api().get(kubeapi.MIGRATION_JOBS, key[0], key[1])
    except ApiError as error:
        if _not_found(error):
            return None
        raise


def _suspend_requested(body: Mapping[str, Any]) -> bool:
    return bool((body.get("spec") or {}).get("suspend"))


def _is_final(body: Mapping[str, Any]) -> bool:
    return MigrationStatus.of(body).final


def _until_next_heartbeat_deadline(body: Mapping[str, Any], timeout: float) -> float:
    """Seconds until the earliest running worker would be taken for frozen if it stays silent (every report is an
    event that reconciles the job again, so this wake-up matters only when the reports stop)."""
    now = dt.datetime.now(dt.UTC)
    waits = [(parse_time(r.heartbeat) - now).total_seconds() + timeout + 0.5
             for r in worker_reports(body).values() if r.heartbeat and not r.state.final]
    return min((w for w in waits if w > 0), default=RESYNC_SECONDS)


def _resource_version(body: Mapping[str, Any] | None) -> int:
    return int(((body or {}).get("metadata") or {}).get("resourceVersion") or 0)


@dataclass
class Controller:
    """The queue, the reconcilers and what they remember between steps; lives on kopf's event loop."""

    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS  # --worker-heartbeat-timeout
    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(RECONCILERS, thread_name_prefix="reconcile"))
    migrationjobs: Mapping[Key, Any] = field(default_factory=dict)  # kopf indices, bound on the first event
    jobs: Mapping[Key, Any] = field(default_factory=dict)
    pods: Mapping[Key, Any] = field(default_factory=dict)
    last_written: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    progress_mirrored: dict[Key, float] = field(default_factory=dict)  # loop time of each job's last progress write
    granted: set[Key] = field(default_factory=set)  # admitted, Job not in the index yet
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None  # kopf's, once started
    notifying: set[Key] = field(default_factory=set)  # jobs whose webhook call is under way
    # kopf peering: the objects this replica heartbeats into, its identity and priority (none: standalone).
    peering: tuple[PeeringObject, ...] = ()
    identity: str = ""
    priority: int = 0
    active: bool = True  # False while kopf has paused this replica for a live peer of higher priority

    def bind(self, migrationjobs: Mapping[Key, Any], jobs: Mapping[Key, Any], pods: Mapping[Key, Any]) -> None:
        self.migrationjobs, self.jobs, self.pods = migrationjobs, jobs, pods

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tasks = [asyncio.create_task(self._reconciler(), name=f"reconciler-{i}") for i in range(RECONCILERS)]
        self.tasks.append(asyncio.create_task(self._refresh_queue(), name="queue-refresh"))
        if self.peering:
            self.active = False  # until the first look at the peering objects says otherwise
            self.tasks.append(asyncio.create_task(self._follow_peering(), name="peering"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- observing (event loop only: the indices change on this loop) -------------------------------------------

    def current(self, key: Key) -> Mapping[str, Any] | None:
        """The freshest copy of one MigrationJob: the index's, or our own last write if that is newer."""
        store = self.migrationjobs.get(key)
        live: Mapping[str, Any] | None = next(iter(store), None) if store is not None else None
        mine = self.last_written.get(key)
        if live is None:
            return None
        if mine is not None:
            if _resource_version(mine) > _resource_version(live):
                return mine
            del self.last_written[key]  # the watch has caught up with our write
        return live

    def children(self, key: Key) -> Children:
        store = self.jobs.get(key)
        job = next(iter(store), None) if store is not None else None
        alive = [p for p in (self.pods.get(key) or ()) if p["alive"]]
        pods = tuple(sorted(p["name"] for p in alive))
        terminating = tuple(sorted(p["name"] for p in alive if p.get("terminating")))
        if job is None:
            return Children(pods=pods, terminating=terminating)
        return Children(job_exists=True, job_suspended=job["suspended"], job_complete=job["complete"],
                        job_failed_message=job["failed"], pods=pods, terminating=terminating)

    def places(self) -> dict[Key, QueuePlace]:
        entries = []
        for key in list(self.migrationjobs):
            body = self.current(key)
            if body is None:
                continue
            final = _is_final(body)
            has_job = key in self.jobs
            if final or has_job:
                self.granted.discard(key)
            entries.append(QueueEntry(
                key=key,
                created=str(body["metadata"].get("creationTimestamp") or ""),
                holds_slot=not final and (has_job or key in self.granted),
                waiting=not final and not has_job and key not in self.granted
                and not body["metadata"].get("deletionTimestamp") and not _suspend_requested(body),
            ))
        return admissions(entries, self.max_concurrent_jobs)

    def notify(self, key: Key, body: Mapping[str, Any]) -> None:
        """Call the final job's webhook unless it has none, it was called about this phase, or a call is under way."""
        if not ((body.get("spec") or {}).get("notify") or {}).get("webhook") or key in self.notifying:
            return
        phase = (body.get("status") or {}).get("phase")
        if ((body.get("status") or {}).get("notification") or {}).get("phase") == phase:
            return
        self.notifying.add(key)
        loop = asyncio.get_running_loop()
        future = _NOTIFIER.submit(_notify, body)

        def done(finished: concurrent.futures.Future[None]) -> None:
            loop.call_soon_threadsafe(self.notifying.discard, key)
            if finished.exception() is not None:
                log.warning("event=notify-failed job=%s/%s error=%r", *key, finished.exception())

        future.add_done_callback(done)

    def snapshot(self) -> tuple[list[Mapping[str, Any]], int]:
        """The jobs as last seen and the number queued, for the metrics endpoint; safe from any thread."""
        async def take() -> tuple[list[Mapping[str, Any]], int]:
            bodies = [body for key in list(self.migrationjobs) if (body := self.current(key)) is not None]
            return bodies, sum(1 for place in self.places().values() if not place.admitted)

        if self.loop is None:
            return [], 0
        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=30)

    def kick(self) -> None:
        """A slot may have freed: wake the jobs that may start now."""
        for key, place in self.places().items():
            if place.admitted:
                self.queue.add(key, urgent=True)

    # -- reconciling ---------------------------------------------------------------------------------------------

    async def _reconciler(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key, waited, urgent = await self.queue.get_waited()
            metrics.QUEUE_WAIT_SECONDS.labels(str(urgent).lower()).observe(waited)
            started = loop.time()
            try:
                await self._step(loop, key)
            except asyncio.CancelledError:
                raise
            except ApiError as error:
                log.warning("event=reconcile-error job=%s/%s status=%s reason=%s", *key, error.status, error.reason)
                metrics.RECONCILE_ERRORS.labels("api").inc()
                self.queue.add_after(key, 2.0)
            except Exception:
                log.exception("event=reconcile-bug job=%s/%s", *key)
                metrics.RECONCILE_ERRORS.labels("bug").inc()
                self.queue.add_after(key, 5.0)
            finally:
                metrics.RECONCILE_SECONDS.observe(loop.time() - started)
                self.queue.done(key)

    async def _step(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        if not self.active:
            return  # a paused replica does nothing; kopf's re-listing when it resumes brings every job back
        body = self.current(key)
        if body is None:
            self.last_written.pop(key, None)
            return
        if body["metadata"].get("deletionTimestamp"):
            return  # the deletion handler takes over
        if _is_final(body):
            self.notify(key, body)  # a final job needs nothing more, but its webhook call may still be due
            return
        place = ADMITTED
        children = self.children(key)
        if not children.job_exists and key not in self.granted and not _suspend_requested(body):
            place = self.places().get(key, ADMITTED)
            if place.admitted:
                self.granted.add(key)  # before any await: the next admission counts this slot as taken
                log.info("event=slot-granted job=%s/%s", *key)
        mirrored_ago = loop.time() - self.progress_mirrored.get(key, -PROGRESS_MIRROR_SECONDS)
        mirror = mirrored_ago >= PROGRESS_MIRROR_SECONDS
        decision, written = await loop.run_in_executor(
            self.pool, functools.partial(reconcile, body, children, place, heartbeat_timeout=self.heartbeat_timeout,
                                         mirror_progress=mirror))
        if written is not None:
            self.last_written[key] = written
            if MigrationStatus.of(body).phase is None:
                self.queue.add(key)  # answered; now the next step (check references, create the Job) at once
            if not progress_behind(written):
                self.progress_mirrored[key] = loop.time()
        if decision.phase is not None and decision.phase.terminal:
            self.granted.discard(key)
            self.progress_mirrored.pop(key, None)
            # Our final write stays in last_written until the watch brings it back: the index still shows this job
            # holding its slot, and the kick must see the slot free now, not at the next queue refresh.
            log.info("event=slot-freed job=%s/%s", *key)
            self.kick()
            if written is not None:
                self.notify(key, written)
            return
        if decision.delete_job:
            self.granted.discard(key)
            self.kick()  # a suspended job's slot is free once its workers are gone
        delay = min(RESYNC_SECONDS, _until_next_heartbeat_deadline(written or body, self.heartbeat_timeout))
        if not mirror and progress_behind(written or body):
            delay = min(delay, PROGRESS_MIRROR_SECONDS - mirrored_ago)
        if decision.stop_job and not decision.kill_pods:
            # The grace period is the one thing that nothing but time ends.
            requested = MigrationStatus.of(written or body).abort_requested_time
            grace = int((body.get("spec") or {}).get("abortGracePeriodSeconds",
                                                     MigrationSpec.abort_grace_period_seconds))
            if requested:
                elapsed = (dt.datetime.now(dt.UTC) - parse_time(requested)).total_seconds()
                delay = min(delay, max(0.5, grace - elapsed + 0.5))
        self.queue.add_after(key, delay)

    async def finalize(self, key: Key) -> bool:
        """One deletion step; True once the job has stopped and its uploads are cleaned up."""
        loop = asyncio.get_running_loop()
        # Read, not the index: kopf holds this object's later events (and so its index entry) until the deletion
        # handler returns, and the janitor must see the workers' latest reports.
        current = await loop.run_in_executor(self.pool, _read_migrationjob, key)
        if current is None:
            return True
        if _is_final(current):
            spec = MigrationSpec.from_spec(current.get("spec") or {})
            leftovers = await loop.run_in_executor(self.pool, _janitor, current, spec)
            if leftovers:
                log.info("event=janitor-on-delete job=%s/%s", *key)
            return True
        decision, written = await loop.run_in_executor(
            self.pool, lambda: reconcile(current, self.children(key), deleting=True))
        if written is not None:
            self.last_written[key] = written
        return decision.phase is not None and decision.phase.terminal

    async def _follow_peering(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                active = await loop.run_in_executor(self.pool, self._peering_says_active)
            except ApiError as error:
                log.warning("event=peering-read-failed status=%s reason=%s", error.status, error.reason)
            else:
                if active != self.active:
                    log.info("event=peering identity=%s priority=%d active=%s", self.identity, self.priority,
                             str(active).lower())
                    # What this replica remembered may have been overtaken by the peer that was active meanwhile.
                    self.granted.clear()
                    self.last_written.clear()
                    self.active = active
                    if active:
                        # Every job is looked at again: what woke a job while this replica was paused was dropped
                        # (kopf's re-listing on resume can even come before this look notices the resume).
                        for key in list(self.migrationjobs):
                            self.queue.add(key)
            await asyncio.sleep(PEERING_LOOK_SECONDS)

    def _peering_says_active(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        for peering in self.peering:
            resource = kubeapi.Resource(f"{PEERING_GROUP}/{PEERING_VERSION}", peering.plural,
                                        namespaced=peering.namespace is not None)
            try:
                body = _api().get(resource, peering.namespace, peering.name)
            except ApiError as error:
                if _not_found(error):
                    return False  # kopf pauses too while a mandatory peering object is missing
                raise
            if not is_active(body.get("status") or {}, self.identity, self.priority, now):
                return False
        return True

    async def _refresh_queue(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_REFRESH_SECONDS)
            if not self.active:
                continue
            for key, place in self.places().items():
                body = self.current(key)
                if body is None:
                    continue
                if place.admitted or MigrationStatus.of(body).message != queued_message(place):
                    self.queue.add(key)


CONTROLLER = Controller()


def _key(namespace: str | None, name: str | None) -> Key:
    return (str(namespace), str(name))


@kopf.index(GROUP, VERSION, PLURAL)
async def migrationjob_index(body: kopf.Body, namespace: str | None, name: str | None,
                             **_: Any) -> dict[Key, dict[str, Any]]:
    """Every MigrationJob as last seen, so admission can count and order all of them without a LIST."""
    return {_key(namespace, name): copy.deepcopy(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGER, LABEL_JOB: kopf.PRESENT})
async def job_index(body: kopf.Body, namespace: str | None, labels: Mapping[str, str],
                    **_: Any) -> dict[Key, dict[str, Any]]:
    """The worker Job of each MigrationJob: whether it is suspended, complete or failed."""
    conditions = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    failed = conditions.get("Failed")
    return {_key(namespace, labels[LABEL_JOB]): {
        "suspended": bool((body.get("spec") or {}).get("suspend")),
        "complete": "Complete" in conditions,
        "failed": str(failed.get("message") or failed.get("reason") or "Failed") if failed else None,
    }}


@kopf.index("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER, LABEL_JOB: kopf.PRESENT})
async def pod_index(body: kopf.Body, namespace: str | None, name: str | None, labels: Mapping[str, str],
                    **_: Any) -> dict[Key, dict[str, Any]]:
    """The worker pods of each MigrationJob: whether each is still alive (running, pending or terminating), and
    whether it is being deleted."""
    phase = (body.get("status") or {}).get("phase")
    deleting = bool(body.get("metadata", {}).get("deletionTimestamp"))
    return {_key(namespace, labels[LABEL_JOB]): {"name": str(name), "alive": phase not in ("Succeeded", "Failed"),
                                                 "terminating": deleting}}


def _bind(kwargs: Mapping[str, Any]) -> None:
    CONTROLLER.bind(kwargs["migrationjob_index"], kwargs["job_index"], kwargs["pod_index"])


@kopf.on.event(GROUP, VERSION, PLURAL)
async def migrationjob_event(event: Mapping[str, Any], body: kopf.Body, namespace: str | None, name: str | None,
                             **kwargs: Any) -> None:
    """A MigrationJob changed (created, spec.abort, a worker's report): reconcile it."""
    _bind(kwargs)
    key = _key(namespace, name)
    if event.get("type") == "DELETED":
        CONTROLLER.queue.forget(key)
        CONTROLLER.last_written.pop(key, None)
        CONTROLLER.progress_mirrored.pop(key, None)
        CONTROLLER.granted.discard(key)
        CONTROLLER.kick()
        return
    # A job without a phase has had no answer yet: it goes first, so a new job's status comes within a second even
    # while hundreds of running jobs report progress.
    CONTROLLER.queue.add(key, urgent=MigrationStatus.of(body).phase is None)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGER, LABEL_JOB: kopf.PRESENT})
async def job_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    """A worker Job changed (complete, failed, suspended): reconcile its MigrationJob."""
    _bind(kwargs)
    CONTROLLER.queue.add(_key(namespace, labels[LABEL_JOB]))


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER, LABEL_JOB: kopf.PRESENT})
async def pod_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    """A worker pod started, ended or went away: reconcile its MigrationJob (abort waits for pods to end)."""
    _bind(kwargs)
    CONTROLLER.queue.add(_key(namespace, labels[LABEL_JOB]))


@kopf.on.startup()
async def start_reconcilers(**_: Any) -> None:
    CONTROLLER.start()


@kopf.on.cleanup()
async def stop_reconcilers(**_: Any) -> None:
    await CONTROLLER.stop()


def _worth_finalizing(body: kopf.Body, **_: Any) -> bool:
    """Whether deleting the job would need cleaning up after: only then does it carry the finalizer.

    A queued job has nothing to clean up, so it gets no finalizer (sparing a metadata patch per job when hundreds are
    created at once); it gets one when it is admitted, and its Job is created only after that (reconcile adds it
    itself, see _hold_finalizer; this predicate keeps kopf from removing it). A final job keeps it only while uploads
    its workers recorded are still to be closed.
    """
    current = MigrationStatus.of(body)
    if current.phase in (Phase.RUNNING, Phase.ABORTING, Phase.SUSPENDED):
        return True
    if current.phase is Phase.PENDING:
        return current.reason != "Queued"
    if current.final:
        return any(w.open_uploads or w.upload_intents for w in current.workers.values())
    return False


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_worth_finalizing)
async def finalize(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    """Deleting a MigrationJob aborts it first: workers stop, open uploads are aborted, then the finalizer goes.

    It waits here rather than raising kopf.TemporaryError to be called again: kopf logs every temporary error at
    ERROR level, and a deletion waiting for its workers is the normal path. Each look reads only the indices.
    """
    _bind(kwargs)
    key = _key(namespace, name)
    while not await CONTROLLER.finalize(key):
        await asyncio.sleep(FINALIZE_LOOK_SECONDS)
