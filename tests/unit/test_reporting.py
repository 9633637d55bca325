"""The worker's status reporter: an upload intent is a required patch, and refusing it stops the create."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from datamover.engine import Progress, UploadIntent, WorkerState
from datamover.worker import reporting
from datamover.worker.reporting import IntentNotRecorded, StatusReporter


class FakeApi:
    def __init__(self, fail: int = 0, status: int = 500) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail, self.status = fail, status

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise ApiException(status=self.status)
        self.patches.append(args[-1]["status"]["workers"]["0"])


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporting.time, "sleep", lambda _: None)


SINCE = dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def test_an_intent_is_in_status_before_on_upload_intent_returns_and_gone_once_cleared() -> None:
    api = FakeApi(fail=2)
    reporter = StatusReporter(api, "ns", "job", 0, "pod")  # type: ignore[arg-type]
    reporter.on_upload_intent(UploadIntent("k", SINCE))
    assert api.patches[-1]["uploadIntents"] == [{"key": "k", "since": "2025-05-06T07:08:09Z"}]
    reporter.on_intent_cleared(UploadIntent("k", SINCE))
    assert api.patches[-1]["uploadIntents"] == []


@pytest.mark.parametrize("status", [500, 404])
def test_an_intent_that_cannot_be_recorded_raises(status: int) -> None:
    api = FakeApi(fail=100, status=status)
    reporter = StatusReporter(api, "ns", "job", 0, "pod")  # type: ignore[arg-type]
    with pytest.raises(IntentNotRecorded):
        reporter.on_upload_intent(UploadIntent("k", SINCE))
    api.fail = 0
    reporter.on_progress(Progress(state=WorkerState.RUNNING, destination_written=True, bytes_skipped=3))
    assert api.patches[-1]["uploadIntents"] == []  # the refused intent is not left behind
    assert api.patches[-1]["destinationWritten"] is True and api.patches[-1]["bytesSkipped"] == 3


def test_a_running_worker_beats_without_progress_and_a_finished_one_falls_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    api = FakeApi()
    reporter = StatusReporter(api, "ns", "job", 0, "pod")  # type: ignore[arg-type]
    reporter.start(aborting=False)
    reporter.beat()
    assert len(api.patches) == 1  # just reported: nothing to add
    clock[0] += reporting.HEARTBEAT_SECONDS
    reporter.beat()
    assert len(api.patches) == 2 and api.patches[-1]["state"] == "running"
    reporter.finish(WorkerState.SUCCEEDED, Progress(state=WorkerState.SUCCEEDED), "")
    clock[0] += 10 * reporting.HEARTBEAT_SECONDS
    reporter.beat()
    assert len(api.patches) == 3 and api.patches[-1]["state"] == "succeeded"


def test_the_rate_follows_a_steady_pace_and_decays_gradually_after_a_pause() -> None:
    meter = reporting.RateMeter(window=10.0)
    meter.update(0.0, 0)
    for second in range(1, 61):
        rate = meter.update(float(second), 100 * second)
    assert 99 < rate <= 100  # a minute at 100/s reads 100/s
    paused = [meter.update(60.0 + s, 6000) for s in (2, 4, 6)]
    assert 0 < paused[-1] < paused[0] < rate  # a pause lowers it step by step, not at once to zero
    assert meter.update(80.0, 5000) < paused[-1]  # a count that shrinks is no negative rate


def test_a_report_carries_rates_and_the_time_of_the_last_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    api = FakeApi()
    reporter = StatusReporter(api, "ns", "job", 0, "pod")  # type: ignore[arg-type]
    reporter.start(aborting=False)
    assert "lastProgressTime" not in api.patches[-1] and api.patches[-1]["bytesPerSecond"] == 0
    for step in range(1, 6):
        clock[0] += 2
        reporter.on_progress(Progress(state=WorkerState.RUNNING, objects_migrated=step, bytes_migrated=step * 2048))
    assert 0 < api.patches[-1]["bytesPerSecond"] <= 1024 and 0 < api.patches[-1]["objectsPerSecond"] <= 0.5
    assert api.patches[-1]["lastProgressTime"]
    reporter.finish(WorkerState.SUCCEEDED, Progress(state=WorkerState.SUCCEEDED, objects_migrated=5), "")
    assert api.patches[-1]["bytesPerSecond"] == 0 and api.patches[-1]["objectsPerSecond"] == 0.0


def test_a_plan_workers_final_report_carries_its_plan() -> None:
    from datamover.engine import Amount, Plan

    api = FakeApi()
    reporter = StatusReporter(api, "ns", "job", 0, "pod")  # type: ignore[arg-type]
    reporter.start(aborting=False)
    assert "plan" not in api.patches[-1]  # the plan comes with the final report only
    plan = Plan(copy=Amount(2, 20), identical=Amount(1, 5), run_requests={"source": {"GetObject": 2}})
    reporter.finish(WorkerState.SUCCEEDED, Progress(state=WorkerState.SUCCEEDED, objects_planned=3), "", plan=plan)
    assert api.patches[-1]["plan"]["copy"] == {"objects": 2, "bytes": 20} and api.patches[-1]["objectsPlanned"] == 3
    assert api.patches[-1]["plan"]["runRequests"] == {"source": {"GetObject": 2}}
