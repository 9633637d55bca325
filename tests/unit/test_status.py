"""The typed status: read from any MigrationJob body, and conditions that move lastTransitionTime only on a flip."""

from __future__ import annotations

from datamover.api import Condition, MigrationStatus, Phase
from datamover.controller.decisions import Decision
from datamover.controller.handlers import _conditions, _status_for, progress_behind
from datamover.engine import WorkerState

EARLIER = "2026-01-01T00:00:00Z"


def test_status_reads_what_the_operator_and_the_workers_wrote() -> None:
    body = {
        "spec": {"destination": {"bucket": "dst"}},
        "status": {
            "phase": "aborting", "reason": "AbortRequested", "message": "m", "observedGeneration": 2,
            "abortRequestedTime": EARLIER,
            "conditions": [{"type": "Ready", "status": "False", "reason": "AbortRequested", "message": "m",
                            "observedGeneration": 2, "lastTransitionTime": EARLIER}],
            "workers": {"0": {"state": "aborting", "openUploads": [{"key": "k", "uploadId": "u"}]}},
        },
    }
    status = MigrationStatus.of(body)
    assert status.phase is Phase.ABORTING and not status.final and status.observed_generation == 2
    assert status.condition("Ready") == Condition("Ready", False, "AbortRequested", "m", 2, EARLIER)
    assert status.condition("Complete") is None
    assert status.workers[0].state is WorkerState.ABORTING
    assert [(u.bucket, u.key, u.upload_id) for u in status.workers[0].open_uploads] == [("dst", "k", "u")]
    assert MigrationStatus.of({}) == MigrationStatus()
    assert MigrationStatus.of({"status": {"phase": "not-a-phase"}}).phase is None


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    running = MigrationStatus(conditions=tuple(
        Condition(kind, False, "Migrating", "", 1, EARLIER) for kind in ("Ready", "Complete", "Failed")))
    still = {c.type: c for c in _conditions(running, Phase.ABORTING, "AbortRequested", "stop", "spec.abort", 1)}
    assert still["Ready"].last_transition_time == EARLIER and still["Ready"].reason == "AbortRequested"
    assert still["AbortRequested"].status and still["AbortRequested"].last_transition_time != EARLIER  # new
    done = {c.type: c for c in _conditions(running, Phase.SUCCEEDED, "Succeeded", "ok", "", 1)}
    assert done["Ready"].status and done["Ready"].last_transition_time != EARLIER
    assert done["Complete"].reason == "Succeeded" and done["Failed"].last_transition_time == EARLIER


def test_progress_is_mirrored_only_when_due_but_always_with_a_new_phase() -> None:
    running = {
        "metadata": {"generation": 1},
        "spec": {"destination": {"bucket": "dst"}},
        "status": {"phase": "running", "reason": "Running", "message": "m", "observedGeneration": 1,
                   "workers": {"0": {"state": "copying", "objectsTotal": 4, "objectsMigrated": 1}}},
    }
    assert progress_behind(running)
    same_phase = Decision(Phase.RUNNING, "Running", "m")
    assert _status_for(running, same_phase, False)["progress"]["objects"] == "1/4"
    assert _status_for(running, same_phase, False, mirror_progress=False) == {}
    done = _status_for(running, Decision(Phase.SUCCEEDED, "Succeeded", "done"), False, mirror_progress=False)
    assert done["phase"] == "succeeded" and done["progress"]["objects"] == "1/4"
    caught_up = {**running, "status": {**running["status"], "progress": done["progress"]}}
    assert not progress_behind(caught_up)


def test_a_plan_is_summed_into_status_plan_and_its_conditions_say_planned() -> None:
    plan = {"copy": {"objects": 2, "bytes": 20}, "runRequests": {"source": {"GetObject": 2}}}
    body = {
        "metadata": {"generation": 1},
        "spec": {"destination": {"bucket": "dst"}, "mode": "plan"},
        "status": {"phase": "running", "reason": "Planning", "message": "m", "observedGeneration": 1,
                   "workers": {"0": {"state": "succeeded", "objectsTotal": 2, "objectsPlanned": 2, "plan": plan},
                               "1": {"state": "succeeded", "objectsTotal": 1, "objectsPlanned": 1, "plan": plan}}},
    }
    patch = _status_for(body, Decision(Phase.SUCCEEDED, "Planned", "a run would copy 4 object(s)"), False)
    assert patch["plan"]["copy"] == {"objects": 4, "bytes": 40}
    assert patch["plan"]["runRequests"] == {"source": {"GetObject": 4}}
    assert patch["progress"]["objects"] == "3/3" and patch["progress"]["percent"] == "100%"
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "Planned"
    assert conditions["Complete"]["reason"] == "Planned"
    assert conditions["Complete"]["message"] == "a run would copy 4 object(s)"
    written = {**body, "status": {**body["status"], "plan": patch["plan"]}}
    assert "plan" not in _status_for(written, Decision(), False)
