"""The operator's phase logic, as a table of observations and the step each must lead to."""

from __future__ import annotations

import datetime as dt

import pytest

from datamover.api import Phase, WorkerReport
from datamover.controller.decisions import (
    Decision,
    MissingReference,
    Observation,
    QueueEntry,
    QueuePlace,
    admissions,
    decide,
)
from datamover.engine import WorkerState

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {"phase": None, "abort_requested": False, "parallelism": 2, "grace_seconds": 60,
                               "now": NOW}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def done(state: WorkerState = WorkerState.SUCCEEDED, failed: int = 0, wrote: bool = True) -> WorkerReport:
    return WorkerReport(state=state, objects_failed=failed, destination_written=wrote)


def test_new_job_is_answered_pending_first_and_its_workers_start_next() -> None:
    d = decide(obs())
    assert d.phase is Phase.PENDING and d.reason == "WorkersStarting" and not d.create_job
    d = decide(obs(phase=Phase.PENDING))
    assert d.phase is Phase.PENDING and d.reason == "WorkersStarting" and d.create_job


def test_job_is_running_once_a_worker_writes_to_the_destination() -> None:
    listing = {0: WorkerReport(WorkerState.RUNNING)}
    assert decide(obs(phase=Phase.PENDING, job_exists=True, alive_pods=("p-0", "p-1"), workers=listing)) == Decision()
    writing = {0: WorkerReport(WorkerState.RUNNING, destination_written=True)}
    d = decide(obs(phase=Phase.PENDING, job_exists=True, alive_pods=("p-0", "p-1"), workers=writing))
    assert d.phase is Phase.RUNNING and d.reason == "Migrating"


def test_queued_job_waits_and_says_its_place() -> None:
    d = decide(obs(queue=QueuePlace(False, position=3, length=7, limit=5)))
    assert d.phase is Phase.PENDING and d.reason == "Queued" and not d.create_job
    assert "position 3 of 7" in d.message and "at most 5" in d.message


def test_abort_before_start_cancels_without_workers() -> None:
    for place in (QueuePlace(False, 1, 1, 1), QueuePlace(True)):
        d = decide(obs(phase=Phase.PENDING, abort_requested=True, queue=place))
        assert d.phase is Phase.CANCELLED and not d.create_job


def test_abort_before_any_write_ends_cancelled_even_after_workers_started() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, alive_pods=(), abort_requested=True,
                   workers={0: done(WorkerState.ABORTED, wrote=False)}))
    assert d.phase is Phase.CANCELLED and d.run_janitor


def test_missing_secret_fails_and_names_it() -> None:
    d = decide(obs(phase=Phase.PENDING,
                   reference_error=MissingReference("SecretNotFound", "Secret ns/creds not found")))
    assert d.phase is Phase.FAILED and d.reason == "SecretNotFound" and "ns/creds" in d.message
    assert not d.create_job


def test_restart_after_job_creation_does_not_create_a_second_job() -> None:
    d = decide(obs(phase=None, job_exists=True))
    assert d.phase is Phase.PENDING and not d.create_job
    assert not decide(obs(phase=Phase.PENDING, job_exists=True)).create_job


def test_running_unchanged_while_workers_work() -> None:
    workers = {0: done(WorkerState.RUNNING)}
    assert decide(obs(phase=Phase.RUNNING, job_exists=True, alive_pods=("p-0", "p-1"), workers=workers)) == Decision()


def test_abort_while_running_moves_to_aborting_and_stops_the_job() -> None:
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, alive_pods=("p-0", "p-1"), abort_requested=True))
    assert d.phase is Phase.ABORTING and d.stop_job and not d.kill_pods


def test_aborting_waits_for_pods_within_grace() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, alive_pods=("p-0",), abort_requested=True,
                   abort_requested_at=NOW - dt.timedelta(seconds=10)))
    assert d.phase is None and not d.kill_pods


def test_aborting_kills_pods_after_grace() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, alive_pods=("p-0",), abort_requested=True,
                   abort_requested_at=NOW - dt.timedelta(seconds=61)))
    assert d.phase is None and d.kill_pods


def test_aborting_ends_aborted_with_janitor_once_pods_are_gone() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, alive_pods=(), abort_requested=True,
                   workers={0: done(WorkerState.ABORTED), 1: done()}))
    assert d.phase is Phase.ABORTED and d.run_janitor


def test_aborted_move_names_objects_left_in_both_places() -> None:
    left = WorkerReport(WorkerState.ABORTED, destination_written=True, objects_retained=1, retained_keys=("a/b",))
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, alive_pods=(), abort_requested=True, workers={0: left}))
    assert d.phase is Phase.ABORTED and "1 moved object(s) are in both places" in d.message and "a/b" in d.message


def test_abort_that_came_too_late_reports_success() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, job_complete=True, abort_requested=True,
                   workers={0: done(), 1: done()}))
    assert d.phase is Phase.SUCCEEDED


def test_complete_job_succeeds() -> None:
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_complete=True, workers={0: done(), 1: done()}))
    assert d.phase is Phase.SUCCEEDED and d.run_janitor


def test_complete_job_with_failed_objects_fails() -> None:
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_complete=True, workers={0: done(failed=2), 1: done()}))
    assert d.phase is Phase.FAILED and "2 object" in d.message


def test_failed_job_reports_the_workers_message() -> None:
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_failed_message="BackoffLimitExceeded",
                   workers={1: WorkerReport(WorkerState.FAILED, message="NoSuchBucket: bucket 'x' at http://s3")}))
    assert d.phase is Phase.FAILED and "worker 1" in d.message and "NoSuchBucket" in d.message
    assert d.reason == "WorkerFailed"


def test_failed_job_waits_for_its_last_pods_before_the_janitor_runs() -> None:
    failed = WorkerReport(WorkerState.FAILED, message="boom")
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_failed_message="PodFailurePolicy", alive_pods=("p-0",),
                   workers={0: failed}))
    assert d == Decision()


def test_failed_worker_reason_becomes_the_condition_reason() -> None:
    failed = WorkerReport(WorkerState.FAILED, message="bucket 'x' not found", reason="BucketNotFound")
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_failed_message="PodFailurePolicy", workers={0: failed}))
    assert d.phase is Phase.FAILED and d.reason == "BucketNotFound"


def entry(name: str, created: str, *, running: bool = False, final: bool = False) -> QueueEntry:
    return QueueEntry(("ns", name), created, holds_slot=running and not final, waiting=not running and not final)


def test_admission_fills_free_slots_in_creation_order() -> None:
    entries = [entry("c", "2026-01-01T00:00:02Z"), entry("a", "2026-01-01T00:00:01Z"),
               entry("b", "2026-01-01T00:00:01Z"), entry("r", "2026-01-01T00:00:00Z", running=True),
               entry("done", "2026-01-01T00:00:00Z", running=True, final=True)]
    places = admissions(entries, limit=2)
    assert places[("ns", "a")].admitted  # oldest; the tie with b is broken by name
    assert places[("ns", "b")] == QueuePlace(False, position=1, length=2, limit=2)
    assert places[("ns", "c")] == QueuePlace(False, position=2, length=2, limit=2)
    assert ("ns", "r") not in places and ("ns", "done") not in places


def test_admission_without_limit_admits_everyone() -> None:
    entries = [entry(str(i), f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    assert all(p.admitted for p in admissions(entries, limit=0).values())


def test_admission_never_exceeds_the_limit() -> None:
    entries = [entry(str(i), "2026-01-01T00:00:00Z", running=i < 3) for i in range(10)]
    places = admissions(entries, limit=3)
    assert not any(p.admitted for p in places.values()) and len(places) == 7


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.CANCELLED])
def test_final_phases_are_final(phase: Phase) -> None:
    assert decide(obs(phase=phase, abort_requested=True, job_exists=True)) == Decision()


def beating(seconds_ago: float, pod: str, state: WorkerState = WorkerState.RUNNING) -> WorkerReport:
    return WorkerReport(state, pod=pod, destination_written=True,
                        heartbeat=(NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_a_worker_whose_heartbeat_stopped_is_restarted_and_named() -> None:
    workers = {0: beating(5, "p-0"), 1: beating(61, "p-1")}
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, alive_pods=("p-0", "p-1"), workers=workers,
                   heartbeat_timeout=60))
    assert d.restart_pods == ("p-1",) and d.phase is None and d.reason == "WorkerUnresponsive"
    assert "worker 1 (pod p-1)" in d.message


@pytest.mark.parametrize("case", ["beating", "finished", "successor", "already-deleted", "aborting"])
def test_no_restart_for_a_live_finished_replaced_or_stopping_worker(case: str) -> None:
    worker = {"beating": beating(59, "p-0"), "finished": beating(600, "p-0", WorkerState.SUCCEEDED),
              "successor": beating(600, "p-0-old"), "already-deleted": beating(600, "p-0"),
              "aborting": beating(600, "p-0")}[case]
    d = decide(obs(phase=Phase.ABORTING if case == "aborting" else Phase.RUNNING, job_exists=True,
                   abort_requested=case == "aborting", abort_requested_at=NOW, alive_pods=("p-0",),
                   terminating_pods=("p-0",) if case == "already-deleted" else (), workers={0: worker},
                   heartbeat_timeout=60))
    assert d.restart_pods == ()


def test_suspend_stops_the_workers_then_removes_the_job_and_runs_the_janitor() -> None:
    running = {"phase": Phase.RUNNING, "job_exists": True, "workers": {0: done(WorkerState.RUNNING)},
               "suspend_requested": True}
    d = decide(obs(**running, alive_pods=("p0", "p1")))
    assert d.phase is Phase.SUSPENDED and d.reason == "Suspending" and d.stop_job and not d.kill_pods
    assert not d.delete_job and not d.run_janitor
    d = decide(obs(**{**running, "phase": Phase.SUSPENDED}, alive_pods=("p0",)))
    assert d.reason == "Suspending" and not d.delete_job  # the kubelet ends a worker past its grace period
    d = decide(obs(**{**running, "phase": Phase.SUSPENDED}))
    assert d.phase is Phase.SUSPENDED and d.reason == "Suspended" and d.delete_job and d.run_janitor
    d = decide(obs(**{**running, "phase": Phase.SUSPENDED, "job_exists": False}))
    assert d == Decision(Phase.SUSPENDED, "Suspended", d.message)


def test_a_suspended_job_resumes_through_the_queue_with_a_new_job() -> None:
    suspended = {"phase": Phase.SUSPENDED, "workers": {0: done(WorkerState.ABORTED)}}
    queued = decide(obs(**suspended, queue=QueuePlace(False, position=2, length=3, limit=1)))
    assert queued.phase is Phase.PENDING and queued.reason == "Queued"
    d = decide(obs(**suspended))
    assert d.phase is Phase.PENDING and d.reason == "Resuming" and not d.create_job
    d = decide(obs(phase=Phase.PENDING, workers=suspended["workers"]))
    assert d.create_job
    # Resumed before the old workers were gone: they finish stopping first.
    d = decide(obs(**suspended, job_exists=True, alive_pods=("p0",)))
    assert d.phase is Phase.SUSPENDED and d.reason == "Suspending"


def test_suspend_before_start_starts_nothing_and_abort_or_delete_ends_a_suspended_job() -> None:
    d = decide(obs(phase=Phase.PENDING, suspend_requested=True))
    assert d.phase is Phase.SUSPENDED and not d.create_job and not d.stop_job
    wrote = {"phase": Phase.SUSPENDED, "workers": {0: done(WorkerState.ABORTED)}, "suspend_requested": True}
    d = decide(obs(**wrote, abort_requested=True))
    assert d.phase is Phase.ABORTED and d.run_janitor
    d = decide(obs(phase=Phase.SUSPENDED, abort_requested=True, deleting=True))
    assert d.phase is Phase.CANCELLED and "MigrationJob deleted" in d.message
    d = decide(obs(**wrote, job_exists=True, alive_pods=("p0",), abort_requested=True))
    assert d.phase is Phase.ABORTING and d.stop_job


def test_a_plan_runs_without_writing_and_ends_succeeded_as_planned() -> None:
    from datamover.engine import Amount, Plan

    listing = {0: WorkerReport(WorkerState.RUNNING)}
    d = decide(obs(phase=Phase.PENDING, job_exists=True, alive_pods=("p-0",), workers=listing, plan=True))
    assert d.phase is Phase.RUNNING and d.reason == "Planning" and "nothing is written" in d.message
    planned = {i: WorkerReport(WorkerState.SUCCEEDED, plan=Plan(copy=Amount(2, 2048), delete_from_source=Amount(3, 3)))
               for i in (0, 1)}
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, job_complete=True, workers=planned, plan=True, move=True))
    assert d.phase is Phase.SUCCEEDED and d.reason == "Planned"
    assert d.message.startswith("a run would copy 4 object(s) (4.0KiB)") and "delete 6 from the source" in d.message
    # Aborted while planning: nothing was ever written, so it is cancelled.
    d = decide(obs(phase=Phase.ABORTING, abort_requested=True, workers=listing, plan=True))
    assert d.phase is Phase.CANCELLED
