"""Spec parsing, quantities and the status shapes of the MigrationJob contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
import yaml

from datamover.api import (
    MigrationSpec,
    Mode,
    SpecError,
    WorkerReport,
    credential_env,
    human_duration,
    job_plan,
    parse_quantity,
    plan_status,
    plan_summary,
    progress_status,
    worker_reports,
)
from datamover.engine import Amount, OpenUpload, Plan, UploadIntent, WorkerState

SPEC = {"source": {"bucket": "a", "credentialsSecretRef": {"name": "s"}}, "destination": {"bucket": "b"}}


def test_defaults_follow_the_schema() -> None:
    spec = MigrationSpec.from_spec(SPEC)
    assert spec.remain_source and not spec.abort and spec.parallelism == 1 and spec.part_size == 16 * 1024**2
    assert spec.source.secret_name == "s" and spec.destination.secret_name is None
    assert spec.abort_grace_period_seconds == 60
    assert spec.stall_timeout_seconds == 60
    assert MigrationSpec.from_spec({**SPEC, "stallTimeoutSeconds": 20}).stall_timeout_seconds == 20


@pytest.mark.parametrize(("text", "size"), [("5Mi", 5 * 1024**2), ("1Gi", 1024**3), ("64M", 64 * 10**6),
                                            (6000000, 6000000)])
def test_quantities(text: str | int, size: int) -> None:
    assert parse_quantity(text, "spec.partSize") == size


def test_small_part_size_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.partSize"):
        MigrationSpec.from_spec({**SPEC, "partSize": "1Mi"})


def test_concurrency_and_part_concurrency_are_read_from_spec_with_their_defaults() -> None:
    spec = MigrationSpec.from_spec({**SPEC, "concurrency": 64, "partConcurrency": 2})
    assert (spec.concurrency, spec.part_concurrency) == (64, 2)
    defaults = MigrationSpec.from_spec(SPEC)
    assert (defaults.concurrency, defaults.part_concurrency) == (32, 8)
    with pytest.raises(SpecError, match=r"spec\.partConcurrency"):
        MigrationSpec.from_spec({**SPEC, "partConcurrency": 0})


def test_missing_destination_is_refused() -> None:
    with pytest.raises(SpecError, match=r"spec\.destination"):
        MigrationSpec.from_spec({"source": {"bucket": "a"}})


def test_credential_env_names() -> None:
    assert credential_env("source", "accessKeyId") == "DATAMOVER_SOURCE_ACCESS_KEY_ID"
    assert credential_env("destination", "sessionToken") == "DATAMOVER_DESTINATION_SESSION_TOKEN"


def test_worker_report_round_trips_through_status() -> None:
    report = WorkerReport(WorkerState.RUNNING, objects_total=3, open_uploads=(OpenUpload("dst", "k", "u1"),))
    body = {"spec": {"destination": {"bucket": "dst"}}, "status": {"workers": {"2": report.to_status()}}}
    assert worker_reports(body) == {2: report}


def test_progress_sums_workers_and_renders_columns() -> None:
    reports = {
        0: WorkerReport(WorkerState.SUCCEEDED, objects_total=2, objects_migrated=2, bytes_total=2048,
                        bytes_migrated=2048),
        1: WorkerReport(WorkerState.RUNNING, objects_total=2, objects_skipped=1, bytes_total=2048,
                        bytes_skipped=1024),
    }
    progress = progress_status(reports)
    assert progress["objects"] == "3/4" and progress["objectsTotal"] == 4
    assert progress["bytes"] == "3.0KiB/4.0KiB"
    assert progress["percent"] == "75%"


def test_progress_percent_counts_bytes_not_objects() -> None:
    """99 small objects done and one large one left is 1% of the work, not 99%."""
    reports = {0: WorkerReport(WorkerState.RUNNING, objects_total=100, objects_migrated=99, bytes_total=100 * 2**20,
                               bytes_migrated=99 * 1024)}
    progress = progress_status(reports)
    assert progress["percent"] == "0%" and progress["objects"] == "99/100"
    reports = {0: WorkerReport(WorkerState.RUNNING, objects_total=4, objects_migrated=1)}  # empty objects only
    assert progress_status(reports)["percent"] == "25%"


def test_progress_sums_the_running_workers_rates_and_estimates_once_everything_is_listed() -> None:
    listing = WorkerReport(WorkerState.RUNNING, objects_total=10, objects_migrated=2, bytes_total=10 * 2**20,
                           bytes_migrated=2 * 2**20, bytes_per_second=2**20, objects_per_second=1.0,
                           last_progress="2026-01-01T00:00:05Z")
    done = WorkerReport(WorkerState.SUCCEEDED, objects_total=4, objects_migrated=4, bytes_total=4 * 2**20,
                        bytes_migrated=4 * 2**20, listing_done=True, last_progress="2026-01-01T00:00:09Z")
    progress = progress_status({0: listing, 1: done})
    assert progress["bytesPerSecond"] == 2**20 and progress["objectsPerSecond"] == 1.0
    assert progress["rate"] == "1.0MiB/s" and progress["lastProgressTime"] == "2026-01-01T00:00:09Z"
    assert progress["eta"] == ""  # worker 0 is still listing: the total may grow
    listed = dataclasses.replace(listing, listing_done=True)
    assert progress_status({0: listed, 1: done})["eta"] == "8s"  # 8 MiB left at 1 MiB/s
    stalled = dataclasses.replace(listed, bytes_per_second=0, objects_per_second=0.0)
    assert progress_status({0: stalled, 1: done})["eta"] == ""
    assert progress_status({1: done})["rate"] == "" and progress_status({1: done})["eta"] == ""
    assert [human_duration(s) for s in (0, 59.6, 200, 7500, 3 * 86400 + 4 * 3600)] == ["0s", "1m0s", "3m20s",
                                                                                       "2h5m", "3d4h"]


def test_intents_and_the_new_counters_round_trip_through_status() -> None:
    since = dt.datetime(2025, 1, 2, 3, 4, 5, 999999, tzinfo=dt.UTC)
    report = WorkerReport(
        state=WorkerState.RUNNING, upload_intents=(UploadIntent("moved/a b", since),), bytes_skipped=7,
        destination_written=True, objects_retained=1, retained_keys=("k",), bytes_per_second=5,
        objects_per_second=0.5, last_progress="2025-01-02T03:04:06Z",
    )
    raw = report.to_status()
    # RFC 3339 with seconds, rounded down: the record never claims an intent later than it was.
    assert raw["uploadIntents"] == [{"key": "moved/a b", "since": "2025-01-02T03:04:05Z"}]
    assert raw["destinationWritten"] is True and raw["bytesSkipped"] == 7
    assert raw["objectsRetained"] == 1 and raw["retainedKeys"] == ["k"]
    back = WorkerReport.from_status(raw, "dst")
    assert back.upload_intents == (UploadIntent("moved/a b", since.replace(microsecond=0)),)
    assert back.destination_written and back.bytes_skipped == 7 and back.retained_keys == ("k",)
    assert (back.bytes_per_second, back.objects_per_second, back.last_progress) == (5, 0.5, "2025-01-02T03:04:06Z")
    assert WorkerReport.from_status({"state": "running"}, "dst").upload_intents == ()


def test_the_crd_schema_declares_every_status_field_the_code_writes() -> None:
    """A field the schema does not declare is pruned by the API server (or, under preserve-unknown-fields, left
    undocumented): what the workers and the operator write must be in the schema, and nothing it declares unused."""
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "datamover.io_migrationjobs.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    report = WorkerReport(WorkerState.RUNNING, open_uploads=(OpenUpload("b", "k", "u"),),
                          upload_intents=(UploadIntent("k", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),),
                          last_progress="2026-01-01T00:00:00Z", plan=PLAN)
    workers = status["workers"]["additionalProperties"]["properties"]
    assert set(workers) == set(report.to_status())
    declared = status["plan"]["properties"]
    assert workers["plan"] == status["plan"] and set(declared) == set(plan_status(PLAN))
    assert set(declared["byMechanism"]["properties"]) == set(plan_status(PLAN)["byMechanism"])
    assert set(status["progress"]["properties"]) == set(progress_status({0: report}))
    assert set(workers["state"]["enum"]) == {s.value for s in WorkerState}


PLAN = Plan(copy=Amount(3, 300), identical=Amount(1, 10), delete_from_source=Amount(4, 310), excluded=Amount(2, 5),
            by_mechanism={"single": Amount(1, 100), "multipart": Amount(1, 100), "server_copy": Amount(1, 50),
                          "server_part_copy": Amount(0, 50)},
            run_requests={"source": {"ListObjectsV2": 1, "GetObject": 2}, "destination": {"PutObject": 2}},
            plan_requests={"source": {"ListObjectsV2": 1}, "destination": {"ListObjectsV2": 1}})


def test_mode_defaults_to_run_and_a_bad_mode_is_refused_naming_the_field() -> None:
    assert MigrationSpec.from_spec(SPEC).mode is Mode.RUN
    assert MigrationSpec.from_spec({**SPEC, "mode": "plan"}).mode is Mode.PLAN
    with pytest.raises(SpecError, match=r"spec\.mode: 'dry-run' is not one of run, plan"):
        MigrationSpec.from_spec({**SPEC, "mode": "dry-run"})


def test_a_plan_round_trips_through_status_and_workers_plans_add_up() -> None:
    report = WorkerReport(WorkerState.SUCCEEDED, plan=PLAN)
    assert WorkerReport.from_status(report.to_status(), "b").plan == PLAN
    assert "plan" not in WorkerReport(WorkerState.SUCCEEDED).to_status()
    other = Plan(copy=Amount(1, 1), by_mechanism={"single": Amount(1, 1)},
                 run_requests={"source": {"GetObject": 1, "HeadBucket": 1}})
    total = job_plan({0: report, 1: WorkerReport(WorkerState.SUCCEEDED, plan=other),
                      2: WorkerReport(WorkerState.RUNNING)})
    assert total is not None
    assert total.copy == Amount(4, 301) and total.identical == Amount(1, 10)
    assert total.by_mechanism["single"] == Amount(2, 101)
    assert total.run_requests == {"source": {"GetObject": 3, "HeadBucket": 1, "ListObjectsV2": 1},
                                  "destination": {"PutObject": 2}}
    assert job_plan({0: WorkerReport(WorkerState.RUNNING)}) is None
    assert plan_summary(total, move=True).startswith(
        "a run would copy 4 object(s) (301B), skip 1 identical (10B), delete 4 from the source (310B)")


def test_planned_objects_are_the_progress_of_a_plan() -> None:
    report = WorkerReport(WorkerState.RUNNING, objects_total=4, bytes_total=400, objects_planned=2, bytes_planned=100)
    progress = progress_status({0: report})
    assert (progress["percent"], progress["objects"], progress["objectsPlanned"]) == ("25%", "2/4", 2)
