"""What the operator does next, as pure functions of what it observed, so the phase and queue logic is unit-testable.

The handlers gather an Observation (spec, status, the Job, its pods, the Secrets, the job's place in the queue) and
carry out the Decision; `queue_order` and `admissions` decide which jobs may run under the concurrency limit. Nothing
here talks to the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from datamover.api import HEARTBEAT_TIMEOUT_SECONDS, Phase, WorkerReport, job_plan, parse_time, plan_summary
from datamover.engine import WorkerState


@dataclass(frozen=True)
class MissingReference:
    """A Secret or key that the spec names but that is missing: why (a condition reason) and what (the message)."""

    reason: str
    message: str


@dataclass(frozen=True)
class QueuePlace:
    """Where a job that has not started stands: admitted (may create its Job now) or waiting at `position` (from 1)."""

    admitted: bool
    position: int = 0
    length: int = 0
    limit: int = 0


ADMITTED = QueuePlace(admitted=True)


@dataclass(frozen=True)
class Observation:
    """Everything a reconcile step looked at."""

    phase: Phase | None
    abort_requested: bool  # spec.abort, or the MigrationJob is being deleted
    parallelism: int
    grace_seconds: int
    now: dt.datetime
    deleting: bool = False
    abort_requested_at: dt.datetime | None = None
    reference_error: MissingReference | None = None
    queue: QueuePlace = ADMITTED
    job_exists: bool = False
    job_complete: bool = False
    job_failed_message: str | None = None  # the Job's Failed condition, when it has one
    alive_pods: tuple[str, ...] = ()  # worker pods not yet finished (running, pending or terminating)
    terminating_pods: tuple[str, ...] = ()  # of those, the ones already being deleted
    workers: Mapping[int, WorkerReport] = field(default_factory=dict)
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS  # a running worker silent this long is taken for frozen
    suspend_requested: bool = False  # spec.suspend
    plan: bool = False  # spec.mode plan: workers list and compare, and write nothing
    move: bool = False  # spec.remainSource false


@dataclass(frozen=True)
class Decision:
    """What to do: the phase to write (None = keep), why, and the side effects that go with it."""

    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    create_job: bool = False
    stop_job: bool = False  # suspend the Job: no new or retried pods, running pods get SIGTERM
    kill_pods: bool = False  # grace period over: delete the remaining pods at once
    run_janitor: bool = False  # abort every multipart upload the workers recorded an intent or an ID for
    restart_pods: tuple[str, ...] = ()  # frozen workers' pods: delete them, the Job starts successors
    delete_job: bool = False  # a suspended job's workers have all stopped: remove its Job (a resume makes a new one)


def _worker_failure(workers: Mapping[int, WorkerReport]) -> tuple[str, str] | None:
    """(reason, message naming the worker) of the first failed worker."""
    for index in sorted(workers):
        report = workers[index]
        if report.state is WorkerState.FAILED:
            return report.reason or "WorkerFailed", f"worker {index}: {report.message or 'failed'}"
    return None


def _all_succeeded(obs: Observation) -> bool:
    return all(
        obs.workers.get(index) is not None and obs.workers[index].state is WorkerState.SUCCEEDED
        for index in range(obs.parallelism)
    )


def _wrote(obs: Observation) -> bool:
    return any(report.destination_written for report in obs.workers.values())


def _retained_note(obs: Observation) -> str:
    """Moved objects left in both places (their source delete failed), named, so nobody has to find them."""
    count = sum(r.objects_retained for r in obs.workers.values())
    if not count:
        return ""
    keys = [k for index in sorted(obs.workers) for k in obs.workers[index].retained_keys][:5]
    return f"; {count} moved object(s) are in both places because their source delete failed: {', '.join(keys)}"


def unresponsive_workers(obs: Observation) -> dict[int, str]:
    """Workers whose pod is alive but whose heartbeat stopped (index -> pod): frozen, or cut off from the API server.

    Only the pod that wrote a report is judged by it; a successor that has not reported yet is not judged by its
    predecessor's last heartbeat.
    """
    stale: dict[int, str] = {}
    for index, report in sorted(obs.workers.items()):
        if (report.state.final or not report.heartbeat or report.pod not in obs.alive_pods
                or report.pod in obs.terminating_pods):
            continue
        if (obs.now - parse_time(report.heartbeat)).total_seconds() >= obs.heartbeat_timeout:
            stale[index] = report.pod
    return stale


def _abort_reason(obs: Observation) -> str:
    return "MigrationJob deleted" if obs.deleting else "spec.abort"


def queued_message(place: QueuePlace) -> str:
    """What a queued job's status says about its place."""
    return (f"waiting for a slot: position {place.position} of {place.length} in the queue; "
            f"at most {place.limit} MigrationJob(s) run at once")


SUSPENDED_MESSAGE = ("workers stopped; objects already migrated and verified are kept; set spec.suspend to false "
                     "to resume")


def _suspension(obs: Observation) -> Decision:
    """A job being suspended, or suspended: stop the workers (as an abort does), then remove the Job.

    The Job goes rather than staying suspended: a worker stopped by SIGTERM ends its pod successfully, and an Indexed
    Job counts that index as complete, so resuming the same Job would skip the rest of that shard. A resumed job gets
    a new Job; shards that had finished end at once (their workers see their own final report).
    """
    if obs.alive_pods:
        # The kubelet ends a worker that outlives its grace period (terminationGracePeriodSeconds).
        return Decision(Phase.SUSPENDED, "Suspending", "spec.suspend: stopping workers at their next checkpoint",
                        stop_job=True)
    if obs.job_exists:
        return Decision(Phase.SUSPENDED, "Suspended", SUSPENDED_MESSAGE, stop_job=True, delete_job=True,
                        run_janitor=True)
    return Decision(Phase.SUSPENDED, "Suspended", SUSPENDED_MESSAGE)


def decide(obs: Observation) -> Decision:
    """The next step for one MigrationJob."""
    if obs.phase is not None and obs.phase.terminal:
        return Decision()

    if obs.phase is Phase.SUSPENDED and not obs.abort_requested:
        if obs.suspend_requested or obs.job_exists:
            # Still stopping (or asked to resume before the old workers were gone): finish stopping first.
            return _suspension(obs)
        if not obs.queue.admitted:
            return Decision(Phase.PENDING, "Queued", queued_message(obs.queue))
        return Decision(Phase.PENDING, "Resuming", f"spec.suspend is false: starting {obs.parallelism} worker(s)")

    if obs.phase is Phase.SUSPENDED and not obs.job_exists:
        # Aborted (or deleted) while suspended: nothing runs, so it is over at once.
        if not _wrote(obs):
            return Decision(Phase.CANCELLED, "Cancelled",
                            f"stopped by {_abort_reason(obs)} while suspended, before any object was written",
                            run_janitor=True)
        return Decision(Phase.ABORTED, "Aborted", f"stopped by {_abort_reason(obs)} while suspended; objects "
                        "already migrated and verified were kept" + _retained_note(obs), run_janitor=True)

    if obs.phase in (None, Phase.PENDING) and not obs.job_exists and obs.suspend_requested and not obs.abort_requested:
        return _suspension(obs)

    if obs.phase in (None, Phase.PENDING) and not obs.job_exists:
        if obs.abort_requested:
            return Decision(Phase.CANCELLED, "Cancelled",
                            f"stopped by {_abort_reason(obs)} before any worker started; nothing was written")
        if obs.reference_error:
            return Decision(Phase.FAILED, obs.reference_error.reason, obs.reference_error.message)
        if not obs.queue.admitted:
            return Decision(Phase.PENDING, "Queued", queued_message(obs.queue))
        # A new job gets its answer first (one status write); its Job is created on the next step.
        return Decision(Phase.PENDING, "WorkersStarting", f"starting {obs.parallelism} worker(s)",
                        create_job=obs.phase is Phase.PENDING)

    if obs.phase in (None, Phase.PENDING, Phase.RUNNING, Phase.SUSPENDED):
        # A Job that exists while the phase still says pending means the workers have not written yet (or the
        # operator restarted between creating the Job and writing the phase).
        if obs.abort_requested:
            return Decision(Phase.ABORTING, "AbortRequested",
                            f"{_abort_reason(obs)}: stopping workers at their next checkpoint", stop_job=True)
        if obs.suspend_requested:
            return _suspension(obs)
        if obs.job_failed_message is not None:
            if obs.alive_pods:
                # The Job controller is stopping the other workers; the janitor must not race one still writing.
                return Decision()
            failed = _worker_failure(obs.workers)
            if failed is not None:
                return Decision(Phase.FAILED, failed[0], failed[1], run_janitor=True)
            return Decision(Phase.FAILED, "WorkerFailed", obs.job_failed_message, run_janitor=True)
        if obs.job_complete:
            failed_objects = sum(r.objects_failed for r in obs.workers.values())
            if failed_objects:
                first = _worker_failure(obs.workers)
                detail = f"; {first[1]}" if first is not None else ""
                return Decision(Phase.FAILED, "ObjectsFailed",
                                f"{failed_objects} object(s) could not be "
                                f"{'compared (plan mode; status.plan covers the others)' if obs.plan else 'migrated'}"
                                f"{detail}", run_janitor=True)
            if obs.plan:
                plan = job_plan(obs.workers)
                summary = plan_summary(plan, obs.move) if plan else "nothing was written"
                return Decision(Phase.SUCCEEDED, "Planned", summary, run_janitor=True)
            return Decision(Phase.SUCCEEDED, "Succeeded", "all objects migrated and verified", run_janitor=True)
        stale = unresponsive_workers(obs)
        if stale:
            named = ", ".join(f"worker {index} (pod {pod})" for index, pod in stale.items())
            return Decision(reason="WorkerUnresponsive", restart_pods=tuple(stale.values()),
                            message=f"{named} sent no heartbeat for {obs.heartbeat_timeout:.0f}s; restarting it "
                                    "(its successor closes the uploads it left open)")
        if obs.plan and obs.phase is not Phase.RUNNING and any(
                report.state is WorkerState.RUNNING for report in obs.workers.values()):
            # A plan never writes: it is running once a worker is.
            return Decision(Phase.RUNNING, "Planning",
                            f"{obs.parallelism} worker(s) listing and comparing both sides; nothing is written")
        if _wrote(obs):
            if obs.phase is not Phase.RUNNING:
                return Decision(Phase.RUNNING, "Migrating", f"{obs.parallelism} worker(s) writing to the destination")
            return Decision()
        if obs.phase is None:
            return Decision(Phase.PENDING, "WorkersStarting", f"starting {obs.parallelism} worker(s)")
        return Decision()

    # aborting
    if not obs.alive_pods:
        if obs.job_complete and _all_succeeded(obs):
            return Decision(Phase.SUCCEEDED, "Succeeded", "finished before the abort took effect", run_janitor=True)
        if not _wrote(obs):
            return Decision(Phase.CANCELLED, "Cancelled",
                            f"stopped by {_abort_reason(obs)} before any object was written", run_janitor=True)
        return Decision(Phase.ABORTED, "Aborted",
                        "workers stopped; objects already migrated and verified were kept" + _retained_note(obs),
                        run_janitor=True)
    started = obs.abort_requested_at or obs.now
    if (obs.now - started).total_seconds() >= obs.grace_seconds:
        return Decision(stop_job=True, kill_pods=True)
    return Decision(stop_job=True)


@dataclass(frozen=True)
class QueueEntry:
    """One MigrationJob as the admission logic sees it."""

    key: tuple[str, str]  # (namespace, name)
    created: str  # metadata.creationTimestamp (RFC 3339, sorts as text)
    holds_slot: bool  # its Job exists (or was just granted) and it has not reached a final phase
    waiting: bool  # no Job yet, not final, not being deleted: it needs a slot to start


def admissions(entries: Iterable[QueueEntry], limit: int) -> dict[tuple[str, str], QueuePlace]:
    """The place of every waiting job: the oldest `limit - running` are admitted, the rest wait in creation order.

    Order is creation time, then namespace and name (creation timestamps have one-second resolution, so many jobs
    created by one script share one). `limit <= 0` means no limit.
    """
    entries = list(entries)
    waiting = sorted((e for e in entries if e.waiting), key=lambda e: (e.created, e.key))
    if limit <= 0:
        return {e.key: ADMITTED for e in waiting}
    free = max(0, limit - sum(1 for e in entries if e.holds_slot))
    places: dict[tuple[str, str], QueuePlace] = {}
    queue_length = max(0, len(waiting) - free)
    for index, entry in enumerate(waiting):
        if index < free:
            places[entry.key] = ADMITTED
        else:
            places[entry.key] = QueuePlace(False, position=index - free + 1, length=queue_length, limit=limit)
    return places
