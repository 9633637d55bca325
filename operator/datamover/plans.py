"""The MigrationPlan contract: a MigrationJob template run on demand or on a cron schedule, as CronJob runs Jobs.

The operator's plan controller (controller/plans.py) and the REST facade (facade/) import this module; it decides,
as pure functions of the plan, its runs and the clock, when a plan is due, what its run is called and what happens
to runs that are still going or have ended. It knows nothing of Kubernetes clients: the callers carry the decisions
out.
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from datamover.api import API_VERSION, KIND, Phase, SpecError

PLAN_PLURAL = "migrationplans"
PLAN_KIND = "MigrationPlan"
# On every run of a plan: which plan made it, and (scheduled runs only) the time it was due, in RFC 3339.
LABEL_PLAN = "datamover.io/plan"
ANNOTATION_SCHEDULED_TIME = "datamover.io/scheduled-time"
# Runs listed in status.runs: the running ones and the most recent ended ones the history limits keep.
RECENT_RUNS = 10


class ConcurrencyPolicy(enum.StrEnum):
    """spec.concurrencyPolicy: what a due run does while an earlier run of the plan is still going."""

    ALLOW = "Allow"  # start it anyway
    FORBID = "Forbid"  # skip it (the next due time tries again)
    REPLACE = "Replace"  # delete the running one (which aborts it cleanly) and start the new one


@dataclass(frozen=True)
class PlanSpec:
    """A MigrationPlan's spec, without the template (which goes into each run as it is)."""

    schedule: str | None = None  # none: the plan runs only on demand
    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    suspend: bool = False
    starting_deadline_seconds: int | None = None
    successful_jobs_history_limit: int = 3
    failed_jobs_history_limit: int = 1

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PlanSpec:
        """Typed values from an already-validated spec; SpecError names a schedule or zone that cannot be used."""
        schedule = spec.get("schedule") or None
        zone = str(spec.get("timeZone") or cls.time_zone)
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SpecError(f"spec.timeZone: {zone!r} is not a time zone name such as Europe/Berlin") from None
        if schedule is not None and not croniter.is_valid(schedule):
            raise SpecError(f"spec.schedule: {schedule!r} is not a cron schedule such as '30 2 * * *'")
        deadline = spec.get("startingDeadlineSeconds")
        return cls(
            schedule=schedule,
            time_zone=zone,
            concurrency_policy=ConcurrencyPolicy(spec.get("concurrencyPolicy", cls.concurrency_policy)),
            suspend=bool(spec.get("suspend", cls.suspend)),
            starting_deadline_seconds=None if deadline is None else int(deadline),
            successful_jobs_history_limit=int(spec.get("successfulJobsHistoryLimit",
                                                       cls.successful_jobs_history_limit)),
            failed_jobs_history_limit=int(spec.get("failedJobsHistoryLimit", cls.failed_jobs_history_limit)),
        )

    def _times(self, start: dt.datetime) -> croniter:
        """The schedule's due times around `start`, read in the plan's zone (croniter keeps wall-clock times across
        DST changes)."""
        if self.schedule is None:
            raise ValueError("a plan without a schedule has no due times")
        return croniter(self.schedule, start.astimezone(zoneinfo.ZoneInfo(self.time_zone)))

    def next_time(self, after: dt.datetime) -> dt.datetime:
        """The first due time after `after`."""
        return self._times(after).get_next(dt.datetime).astimezone(dt.UTC)  # type: ignore[no-any-return]

    def latest_time(self, now: dt.datetime) -> dt.datetime:
        """The latest due time at or before `now` (found directly, however long ago the last run was)."""
        return self._times(now + dt.timedelta(seconds=1)).get_prev(dt.datetime).astimezone(  # type: ignore[no-any-return]
            dt.UTC)


@dataclass(frozen=True)
class Run:
    """One MigrationJob a plan made, as the controller sees it."""

    name: str
    phase: Phase | None  # None: the operator has not answered it yet
    created: dt.datetime
    scheduled_time: dt.datetime | None = None  # None: a run on demand
    completion_time: str = ""

    @property
    def active(self) -> bool:
        return self.phase is None or not self.phase.terminal

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "phase": str(self.phase or Phase.PENDING)}
        if self.scheduled_time is not None:
            entry["scheduledTime"] = rfc3339(self.scheduled_time)
        if self.completion_time:
            entry["completionTime"] = self.completion_time
        return entry


@dataclass(frozen=True)
class PlanDecision:
    """What the controller does for a plan now, and when to look again."""

    create: dt.datetime | None = None  # the due time of the run to create now
    delete: tuple[str, ...] = ()  # runs to delete: replaced, or beyond the history limits
    skipped: dt.datetime | None = None  # a due time not run because of concurrencyPolicy Forbid
    next_time: dt.datetime | None = None  # the next due time (none: on demand only, or suspended)
    last_schedule_time: dt.datetime | None = None  # the most recent due time acted on (run, skipped or missed)


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_name(plan: str, scheduled: dt.datetime) -> str:
    """A scheduled run's name: the plan's and the due minute since the epoch, so a restarted operator that decides
    the same run again gets a conflict on create instead of a duplicate."""
    return f"{plan}-{int(scheduled.timestamp()) // 60}"


def decide(spec: PlanSpec, runs: Sequence[Run], created: dt.datetime, last_schedule_time: dt.datetime | None,
           now: dt.datetime) -> PlanDecision:
    """CronJob's semantics for one plan at `now`.

    Of the due times since the last one acted on (or the plan's creation), only the latest is a candidate: missed
    runs (an operator that was down) make at most one catch-up run, and none if that latest time is older than
    startingDeadlineSeconds. A candidate whose run exists already (its name is the key) is not run twice.
    """
    prune = _beyond_history(spec, runs)
    if spec.schedule is None or spec.suspend:
        return PlanDecision(delete=prune, last_schedule_time=last_schedule_time)
    latest = spec.latest_time(now)
    due = latest if latest > (last_schedule_time or created) else None
    next_time = spec.next_time(now)
    if due is None:
        return PlanDecision(delete=prune, next_time=next_time, last_schedule_time=last_schedule_time)
    deadline = spec.starting_deadline_seconds
    if deadline is not None and (now - due).total_seconds() > deadline:
        return PlanDecision(delete=prune, next_time=next_time, last_schedule_time=due)
    if any(r.scheduled_time == due for r in runs):
        return PlanDecision(delete=prune, next_time=next_time, last_schedule_time=due)
    active = [r.name for r in runs if r.active]
    if active and spec.concurrency_policy is ConcurrencyPolicy.FORBID:
        return PlanDecision(delete=prune, skipped=due, next_time=next_time, last_schedule_time=due)
    replaced = tuple(active) if spec.concurrency_policy is ConcurrencyPolicy.REPLACE else ()
    return PlanDecision(create=due, delete=replaced + prune, next_time=next_time, last_schedule_time=due)


def _beyond_history(spec: PlanSpec, runs: Sequence[Run]) -> tuple[str, ...]:
    """Ended runs past the history limits, oldest first: succeeded ones count against the successful limit, every
    other end (failed, aborted, cancelled) against the failed one."""
    ended = sorted((r for r in runs if not r.active), key=lambda r: (r.created, r.name), reverse=True)
    succeeded = [r.name for r in ended if r.phase is Phase.SUCCEEDED]
    failed = [r.name for r in ended if r.phase is not Phase.SUCCEEDED]
    return tuple(succeeded[spec.successful_jobs_history_limit:] + failed[spec.failed_jobs_history_limit:])


def run_manifest(plan: Mapping[str, Any], name: str | None, scheduled: dt.datetime | None) -> dict[str, Any]:
    """The MigrationJob of one run: the plan's template, owned by the plan (deleting the plan deletes its runs),
    labelled with it. `name` None asks the API server for a fresh one (a run on demand)."""
    meta = plan["metadata"]
    template = plan["spec"]["jobTemplate"]
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), LABEL_PLAN: meta["name"]}
    annotations = dict(template_meta.get("annotations") or {})
    if scheduled is not None:
        annotations[ANNOTATION_SCHEDULED_TIME] = rfc3339(scheduled)
    metadata: dict[str, Any] = {
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": API_VERSION, "kind": PLAN_KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }],
    }
    if annotations:
        metadata["annotations"] = annotations
    if name is None:
        metadata["generateName"] = f"{meta['name']}-"
    else:
        metadata["name"] = name
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": dict(template["spec"])}


def run_of(body: Mapping[str, Any]) -> Run:
    """A plan's run, from its MigrationJob."""
    meta = body["metadata"]
    status = body.get("status") or {}
    scheduled = (meta.get("annotations") or {}).get(ANNOTATION_SCHEDULED_TIME)
    phase = status.get("phase")
    return Run(
        name=str(meta["name"]),
        phase=Phase(phase) if phase else None,
        created=_parse(str(meta.get("creationTimestamp") or "1970-01-01T00:00:00Z")),
        scheduled_time=_parse(scheduled) if scheduled else None,
        completion_time=str(status.get("completionTime") or ""),
    )


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def plan_status(spec: PlanSpec | None, runs: Sequence[Run], decision: PlanDecision, generation: int,
                problem: str = "") -> dict[str, Any]:
    """status of a plan: its recent runs (newest first), the active ones, the last and next due times."""
    recent = sorted(runs, key=lambda r: (r.created, r.name), reverse=True)[:RECENT_RUNS]
    succeeded = [r.completion_time for r in runs if r.phase is Phase.SUCCEEDED and r.completion_time]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "active": sorted(r.name for r in runs if r.active),
        "runs": [r.to_status() for r in recent],
        "lastScheduleTime": rfc3339(decision.last_schedule_time) if decision.last_schedule_time else None,
        "nextScheduleTime": rfc3339(decision.next_time) if decision.next_time else None,
        "lastSuccessfulTime": max(succeeded) if succeeded else None,
    }
    if problem:
        status.update(reason="InvalidSpec", message=problem)
    elif spec is not None and spec.suspend:
        status.update(reason="Suspended", message="spec.suspend is set: no scheduled runs")
    elif spec is not None and spec.schedule is None:
        status.update(reason="OnDemand", message="no spec.schedule: runs only when asked")
    else:
        status.update(reason="Scheduled", message=f"next run at {status['nextScheduleTime']}")
    return status
