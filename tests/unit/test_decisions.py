"""The operator's phase logic, as a table of observations and the step each must lead to."""

from __future__ import annotations

import datetime as dt

import pytest

from datamover.api import Phase, WorkerReport, WorkerState
from datamover.controller.decisions import Decision, Observation, decide

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {"phase": None, "abort_requested": False, "parallelism": 2, "grace_seconds": 60,
                               "now": NOW}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def done(state: WorkerState = WorkerState.SUCCEEDED, failed: int = 0) -> WorkerReport:
    return WorkerReport(state=state, objects_failed=failed)


def test_new_job_starts_workers() -> None:
    d = decide(obs())
    assert d.phase is Phase.RUNNING and d.create_job


def test_abort_before_start_cancels_without_workers() -> None:
    d = decide(obs(phase=Phase.PENDING, abort_requested=True))
    assert d.phase is Phase.CANCELLED and not d.create_job


def test_missing_secret_fails_and_names_it() -> None:
    d = decide(obs(reference_error="Secret ns/creds not found"))
    assert d.phase is Phase.FAILED and d.reason == "InvalidReference" and "ns/creds" in d.message
    assert not d.create_job


def test_restart_after_job_creation_does_not_create_a_second_job() -> None:
    d = decide(obs(phase=Phase.PENDING, job_exists=True))
    assert d.phase is Phase.RUNNING and not d.create_job


def test_running_unchanged_while_workers_work() -> None:
    assert decide(obs(phase=Phase.RUNNING, job_exists=True, pods_alive=2)) == Decision()


def test_abort_while_running_moves_to_aborting_and_stops_the_job() -> None:
    d = decide(obs(phase=Phase.RUNNING, job_exists=True, pods_alive=2, abort_requested=True))
    assert d.phase is Phase.ABORTING and d.stop_job and not d.kill_pods


def test_aborting_waits_for_pods_within_grace() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, pods_alive=1, abort_requested=True,
                   abort_requested_at=NOW - dt.timedelta(seconds=10)))
    assert d.phase is None and not d.kill_pods


def test_aborting_kills_pods_after_grace() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, pods_alive=1, abort_requested=True,
                   abort_requested_at=NOW - dt.timedelta(seconds=61)))
    assert d.phase is None and d.kill_pods


def test_aborting_ends_aborted_with_janitor_once_pods_are_gone() -> None:
    d = decide(obs(phase=Phase.ABORTING, job_exists=True, pods_alive=0, abort_requested=True,
                   workers={0: done(WorkerState.ABORTED), 1: done()}))
    assert d.phase is Phase.ABORTED and d.run_janitor


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


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.CANCELLED])
def test_final_phases_are_final(phase: Phase) -> None:
    assert decide(obs(phase=phase, abort_requested=True, job_exists=True)) == Decision()
