"""The worker's status reporter: an upload intent is a required patch, and refusing it stops the create.

The reporter talks to a stand-in API server on loopback (tests/fakekube.py) through the real client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pykube
import pytest

from datamover import kubeapi
from datamover.engine import Progress, UploadIntent, WorkerState
from datamover.worker import reporting
from datamover.worker.reporting import IntentNotRecorded, StatusReporter
from tests.fakekube import Answer, Request, client_of, kubeconfig, serve, status


class FakeApi:
    """Records worker 0's status patches; refuses the next `fail` of them with `code`."""

    def __init__(self, fail: int = 0, code: int = 500) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail, self.code = fail, code

    def respond(self, request: Request) -> Answer:
        assert (request.method, request.path) == (
            "PATCH", "/apis/datamover.io/v1alpha1/namespaces/ns/migrationjobs/job/status")
        assert request.headers["content-type"] == kubeapi.MERGE_PATCH
        if self.fail:
            self.fail -= 1
            return status(self.code, "InternalError", "injected")
        self.patches.append(request.body["status"]["workers"]["0"])
        return Answer(body={})


Connect = Callable[..., tuple[FakeApi, kubeapi.Client]]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """A FakeApi behind a stand-in API server, and a client of it."""
    with contextlib.ExitStack() as servers:
        def make(fail: int = 0, code: int = 500) -> tuple[FakeApi, kubeapi.Client]:
            api = FakeApi(fail, code)
            server = servers.enter_context(serve(api.respond))
            return api, client_of(server)
        yield make


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporting.time, "sleep", lambda _: None)


SINCE = dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def test_an_intent_is_in_status_before_on_upload_intent_returns_and_gone_once_cleared(connect: Connect) -> None:
    api, client = connect(fail=2)
    reporter = StatusReporter(client, "ns", "job", 0, "pod")
    reporter.on_upload_intent(UploadIntent("k", SINCE))
    assert api.patches[-1]["uploadIntents"] == [{"key": "k", "since": "2025-05-06T07:08:09Z"}]
    reporter.on_intent_cleared(UploadIntent("k", SINCE))
    assert api.patches[-1]["uploadIntents"] == []


@pytest.mark.parametrize("code", [500, 404])
def test_an_intent_that_cannot_be_recorded_raises(code: int, connect: Connect) -> None:
    api, client = connect(fail=100, code=code)
    reporter = StatusReporter(client, "ns", "job", 0, "pod")
    with pytest.raises(IntentNotRecorded):
        reporter.on_upload_intent(UploadIntent("k", SINCE))
    api.fail = 0
    reporter.on_progress(Progress(state=WorkerState.RUNNING, destination_written=True, bytes_skipped=3))
    assert api.patches[-1]["uploadIntents"] == []  # the refused intent is not left behind
    assert api.patches[-1]["destinationWritten"] is True and api.patches[-1]["bytesSkipped"] == 3


def test_a_running_worker_beats_without_progress_and_a_finished_one_falls_silent(
        monkeypatch: pytest.MonkeyPatch, connect: Connect) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    api, client = connect()
    reporter = StatusReporter(client, "ns", "job", 0, "pod")
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


def test_a_report_carries_rates_and_the_time_of_the_last_progress(monkeypatch: pytest.MonkeyPatch,
                                                                 connect: Connect) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    api, client = connect()
    reporter = StatusReporter(client, "ns", "job", 0, "pod")
    reporter.start(aborting=False)
    assert "lastProgressTime" not in api.patches[-1] and api.patches[-1]["bytesPerSecond"] == 0
    for step in range(1, 6):
        clock[0] += 2
        reporter.on_progress(Progress(state=WorkerState.RUNNING, objects_migrated=step, bytes_migrated=step * 2048))
    assert 0 < api.patches[-1]["bytesPerSecond"] <= 1024 and 0 < api.patches[-1]["objectsPerSecond"] <= 0.5
    assert api.patches[-1]["lastProgressTime"]
    reporter.finish(WorkerState.SUCCEEDED, Progress(state=WorkerState.SUCCEEDED, objects_migrated=5), "")
    assert api.patches[-1]["bytesPerSecond"] == 0 and api.patches[-1]["objectsPerSecond"] == 0.0


def test_a_plan_workers_final_report_carries_its_plan(connect: Connect) -> None:
    from datamover.engine import Amount, Plan

    api, client = connect()
    reporter = StatusReporter(client, "ns", "job", 0, "pod")
    reporter.start(aborting=False)
    assert "plan" not in api.patches[-1]  # the plan comes with the final report only
    plan = Plan(copy=Amount(2, 20), identical=Amount(1, 5), run_requests={"source": {"GetObject": 2}})
    reporter.finish(WorkerState.SUCCEEDED, Progress(state=WorkerState.SUCCEEDED, objects_planned=3), "", plan=plan)
    assert api.patches[-1]["plan"]["copy"] == {"objects": 2, "bytes": 20} and api.patches[-1]["objectsPlanned"] == 3
    assert api.patches[-1]["plan"]["runRequests"] == {"source": {"GetObject": 2}}


def test_an_unreachable_api_server_refuses_an_intent_after_its_attempts_and_costs_a_progress_report_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    with serve(lambda _: Answer()) as gone:
        url = gone.url  # nothing listens there any more
    reporter = StatusReporter(kubeapi.Client(pykube.KubeConfig(kubeconfig(url, token="t"))), "ns", "job", 0, "pod")
    reporter.on_progress(Progress(state=WorkerState.RUNNING, bytes_skipped=1))  # one try, no exception
    with pytest.raises(IntentNotRecorded):
        reporter.on_upload_intent(UploadIntent("k", SINCE))
    failures = [r.getMessage() for r in caplog.records if "status-patch-failed" in r.getMessage()]
    assert len(failures) == 1 + reporting.REQUIRED_PATCH_ATTEMPTS
    assert all("status=ConnectionError" in f for f in failures)
