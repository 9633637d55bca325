"""What the operator does next, as a pure function of what it observed, so the phase logic is unit-testable.

The handlers gather an Observation (spec, status, the Job, its pods, the Secrets) and carry out the Decision; nothing
here talks to the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from datamover.api import Phase, WorkerReport, WorkerState


@dataclass(frozen=True)
class Observation:
    """Everything a reconcile step looked at."""

    phase: Phase | None
    abort_requested: bool  # spec.abort, or the MigrationJob is being deleted
    parallelism: int
    grace_seconds: int
    now: dt.datetime
    abort_requested_at: dt.datetime | None = None
    reference_error: str | None = None  # a Secret or key that the spec names but is missing
    job_exists: bool = False
    job_complete: bool = False
    job_failed_message: str | None = None  # the Job's Failed condition, when it has one
    pods_alive: int = 0  # worker pods not yet finished (running, pending or terminating)
    workers: Mapping[int, WorkerReport] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What to do: the phase to write (None = keep), why, and the side effects that go with it."""

    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    create_job: bool = False
    stop_job: bool = False  # suspend the Job: no new or retried pods, running pods get SIGTERM
    kill_pods: bool = False  # grace period over: delete the remaining pods at once
    run_janitor: bool = False  # abort every multipart upload still recorded in status.workers


def _worker_failure(workers: Mapping[int, WorkerReport]) -> str | None:
    for index in sorted(workers):
        report = workers[index]
        if report.state is WorkerState.FAILED:
            return f"worker {index}: {report.message or 'failed'}"
    return None


def _all_succeeded(obs: Observation) -> bool:
    return all(
        obs.workers.get(index) is not None and obs.workers[index].state is WorkerState.SUCCEEDED
        for index in range(obs.parallelism)
    )


def decide(obs: Observation) -> Decision:
    """The next step for one MigrationJob."""
    if obs.phase is not None and obs.phase.terminal:
        return Decision()

    if obs.phase in (None, Phase.PENDING) and not obs.job_exists:
        if obs.abort_requested:
            return Decision(Phase.CANCELLED, "Cancelled", "aborted before any worker started")
        if obs.reference_error:
            return Decision(Phase.FAILED, "InvalidReference", obs.reference_error)
        return Decision(Phase.RUNNING, "Started", f"started {obs.parallelism} worker(s)", create_job=True)

    if obs.phase in (None, Phase.PENDING, Phase.RUNNING):
        # A Job that exists while the phase still says pending means an operator restart between the two writes.
        if obs.abort_requested:
            return Decision(Phase.ABORTING, "AbortRequested", "stopping workers at their next checkpoint",
                            stop_job=True)
        if obs.job_failed_message is not None:
            message = _worker_failure(obs.workers) or obs.job_failed_message
            return Decision(Phase.FAILED, "MigrationFailed", message, run_janitor=True)
        if obs.job_complete:
            failed = sum(r.objects_failed for r in obs.workers.values())
            if failed:
                return Decision(Phase.FAILED, "ObjectsFailed", f"{failed} object(s) could not be migrated",
                                run_janitor=True)
            return Decision(Phase.SUCCEEDED, "Succeeded", "all objects migrated and verified", run_janitor=True)
        if obs.phase is not Phase.RUNNING:
            return Decision(Phase.RUNNING, "Started", f"started {obs.parallelism} worker(s)")
        return Decision()

    # aborting
    if obs.pods_alive == 0:
        if obs.job_complete and _all_succeeded(obs):
            return Decision(Phase.SUCCEEDED, "Succeeded", "finished before the abort took effect", run_janitor=True)
        return Decision(Phase.ABORTED, "Aborted", "workers stopped; migrated objects were kept", run_janitor=True)
    started = obs.abort_requested_at or obs.now
    if (obs.now - started).total_seconds() >= obs.grace_seconds:
        return Decision(stop_job=True, kill_pods=True)
    return Decision(stop_job=True)
