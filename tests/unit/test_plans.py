"""MigrationPlan schedules behave as CronJob's do: due times in a zone, one catch-up run, the concurrency policy, the
history limits, and run names that make a repeated decision harmless."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamover.api import API_VERSION, KIND, Phase, SpecError
from datamover.plans import (
    ANNOTATION_SCHEDULED_TIME,
    LABEL_PLAN,
    ConcurrencyPolicy,
    PlanSpec,
    Run,
    decide,
    plan_status,
    run_manifest,
    run_name,
    run_of,
)

CRD = Path(__file__).resolve().parents[2] / "crds" / "datamover.io_migrationplans.yaml"
UTC = dt.UTC
CREATED = dt.datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def hourly(**kwargs: Any) -> PlanSpec:
    return PlanSpec(schedule="0 * * * *", **kwargs)


def test_the_plan_spec_defaults_are_the_schema_defaults() -> None:
    crd = yaml.safe_load(CRD.read_text())
    properties = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    schema = {name: prop["default"] for name, prop in properties.items() if "default" in prop}
    parsed = PlanSpec.from_spec({"jobTemplate": {"spec": {}}})
    assert schema == {"timeZone": parsed.time_zone, "concurrencyPolicy": parsed.concurrency_policy.value,
                      "suspend": parsed.suspend, "successfulJobsHistoryLimit": parsed.successful_jobs_history_limit,
                      "failedJobsHistoryLimit": parsed.failed_jobs_history_limit}
    assert parsed == PlanSpec()


@pytest.mark.parametrize(("spec", "field"), [
    ({"schedule": "61 * * * *"}, "spec.schedule"),
    ({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"}, "spec.timeZone"),
])
def test_a_schedule_or_zone_that_cannot_be_used_is_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        PlanSpec.from_spec(spec)


def test_a_schedule_is_read_in_its_time_zone_across_a_dst_change() -> None:
    spec = PlanSpec(schedule="30 2 * * *", time_zone="Europe/Berlin")
    # 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00); the day after it does, at 00:30 UTC.
    assert spec.next_time(at("2026-03-28T12:00:00")) == at("2026-03-29T01:00:00")
    assert spec.next_time(at("2026-03-29T01:00:00")) == at("2026-03-30T00:30:00")
    assert PlanSpec(schedule="30 2 * * *").next_time(at("2026-03-28T12:00:00")) == at("2026-03-29T02:30:00")


def test_nothing_is_due_before_the_first_time_after_creation() -> None:
    decision = decide(hourly(), [], CREATED, None, at("2026-03-01T00:59:59"))
    assert decision.create is None
    assert decision.next_time == at("2026-03-01T01:00:00")


def test_a_due_time_makes_one_run_named_after_its_minute() -> None:
    decision = decide(hourly(), [], CREATED, None, at("2026-03-01T01:00:05"))
    assert decision.create == at("2026-03-01T01:00:00")
    assert decision.last_schedule_time == decision.create
    assert decision.next_time == at("2026-03-01T02:00:00")
    assert run_name("nightly", decision.create) == f"nightly-{int(decision.create.timestamp()) // 60}"


def test_missed_runs_make_one_catch_up_run_the_latest() -> None:
    decision = decide(hourly(), [], CREATED, at("2026-03-01T01:00:00"), at("2026-03-01T05:10:00"))
    assert decision.create == at("2026-03-01T05:00:00")


def test_a_year_of_missed_minutes_makes_one_run_at_the_latest() -> None:
    spec = PlanSpec(schedule="* * * * *")
    decision = decide(spec, [], CREATED, at("2026-03-01T01:00:00"), at("2027-03-01T01:00:30"))
    assert (decision.create, decision.next_time) == (at("2027-03-01T01:00:00"), at("2027-03-01T01:01:00"))


def test_a_run_past_its_starting_deadline_is_skipped() -> None:
    spec = hourly(starting_deadline_seconds=300)
    late = decide(spec, [], CREATED, at("2026-03-01T01:00:00"), at("2026-03-01T05:10:00"))
    assert late.create is None
    assert late.last_schedule_time == at("2026-03-01T05:00:00")  # given up, not tried again
    assert decide(spec, [], CREATED, at("2026-03-01T01:00:00"), at("2026-03-01T05:04:00")).create is not None


def test_a_run_that_exists_already_is_not_made_again() -> None:
    due = at("2026-03-01T01:00:00")
    made = Run("p-1", Phase.RUNNING, due, due)
    assert decide(hourly(concurrency_policy=ConcurrencyPolicy.ALLOW), [made], CREATED, None,
                  at("2026-03-01T01:00:30")).create is None


RUNNING = Run("p-old", Phase.RUNNING, at("2026-03-01T00:00:00"), at("2026-03-01T00:00:00"))
NOT_ANSWERED = Run("p-old", None, at("2026-03-01T00:00:00"), at("2026-03-01T00:00:00"))


@pytest.mark.parametrize("active", [RUNNING, NOT_ANSWERED])
def test_forbid_skips_a_due_run_while_one_is_going(active: Run) -> None:
    decision = decide(hourly(concurrency_policy=ConcurrencyPolicy.FORBID), [active], CREATED, None,
                      at("2026-03-01T01:00:01"))
    assert (decision.create, decision.delete, decision.skipped) == (None, (), at("2026-03-01T01:00:00"))


def test_replace_deletes_the_running_one_and_starts_the_new_one() -> None:
    decision = decide(hourly(concurrency_policy=ConcurrencyPolicy.REPLACE), [RUNNING], CREATED, None,
                      at("2026-03-01T01:00:01"))
    assert (decision.create, decision.delete) == (at("2026-03-01T01:00:00"), ("p-old",))


def test_allow_starts_the_new_one_beside_the_running_one() -> None:
    decision = decide(hourly(concurrency_policy=ConcurrencyPolicy.ALLOW), [RUNNING], CREATED, None,
                      at("2026-03-01T01:00:01"))
    assert (decision.create, decision.delete) == (at("2026-03-01T01:00:00"), ())


def test_suspend_and_no_schedule_run_nothing() -> None:
    now = at("2026-03-01T05:00:01")
    assert decide(hourly(suspend=True), [], CREATED, None, now).create is None
    assert decide(hourly(suspend=True), [], CREATED, None, now).next_time is None
    assert decide(PlanSpec(), [], CREATED, None, now) == decide(PlanSpec(), [], CREATED, None, now)
    assert decide(PlanSpec(), [], CREATED, None, now).create is None


def test_ended_runs_beyond_the_history_limits_are_deleted_oldest_first() -> None:
    def ended(name: str, phase: Phase, minute: int) -> Run:
        return Run(name, phase, at(f"2026-03-01T00:{minute:02d}:00"))

    runs = [ended("s1", Phase.SUCCEEDED, 1), ended("s2", Phase.SUCCEEDED, 2), ended("s3", Phase.SUCCEEDED, 3),
            ended("f1", Phase.FAILED, 4), ended("a1", Phase.ABORTED, 5), ended("c1", Phase.CANCELLED, 6),
            Run("r1", Phase.RUNNING, at("2026-03-01T00:00:00"))]
    spec = PlanSpec(successful_jobs_history_limit=2, failed_jobs_history_limit=1)
    assert sorted(decide(spec, runs, CREATED, None, at("2026-03-01T00:10:00")).delete) == ["a1", "f1", "s1"]


PLAN = {
    "apiVersion": API_VERSION, "kind": "MigrationPlan",
    "metadata": {"name": "nightly", "namespace": "team-a", "uid": "u-1", "generation": 2},
    "spec": {"schedule": "0 * * * *", "jobTemplate": {
        "metadata": {"labels": {"team": "a"}},
        "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"}, "remainSource": True},
    }},
}


def test_a_run_is_the_template_owned_by_and_labelled_with_its_plan() -> None:
    due = at("2026-03-01T01:00:00")
    manifest = run_manifest(PLAN, run_name("nightly", due), due)
    assert (manifest["apiVersion"], manifest["kind"]) == (API_VERSION, KIND)
    assert manifest["spec"] == PLAN["spec"]["jobTemplate"]["spec"]
    meta = manifest["metadata"]
    assert meta["labels"] == {"team": "a", LABEL_PLAN: "nightly"}
    assert meta["annotations"] == {ANNOTATION_SCHEDULED_TIME: "2026-03-01T01:00:00Z"}
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("MigrationPlan", "nightly", "u-1",
                                                                                 True)
    on_demand = run_manifest(PLAN, None, None)["metadata"]
    assert on_demand["generateName"] == "nightly-" and "name" not in on_demand and "annotations" not in on_demand


def test_the_plan_status_lists_recent_runs_newest_first_and_the_next_time() -> None:
    due = at("2026-03-01T01:00:00")
    manifest = run_manifest(PLAN, run_name("nightly", due), due)
    manifest["metadata"]["creationTimestamp"] = "2026-03-01T01:00:01Z"
    run = run_of(manifest)
    assert (run.scheduled_time, run.phase, run.active) == (due, None, True)
    done = Run("nightly-0", Phase.SUCCEEDED, at("2026-03-01T00:00:01"), None, "2026-03-01T00:30:00Z")
    decision = decide(hourly(), [run, done], CREATED, due, at("2026-03-01T01:00:02"))
    status = plan_status(hourly(), [run, done], decision, 2)
    assert status["runs"] == [
        {"name": run.name, "phase": "pending", "scheduledTime": "2026-03-01T01:00:00Z"},
        {"name": "nightly-0", "phase": "succeeded", "completionTime": "2026-03-01T00:30:00Z"},
    ]
    assert status["active"] == [run.name]
    assert (status["nextScheduleTime"], status["lastSuccessfulTime"]) == ("2026-03-01T02:00:00Z",
                                                                         "2026-03-01T00:30:00Z")
