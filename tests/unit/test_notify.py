"""spec.notify: the CloudEvent a webhook receives, and how delivery retries, read by a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from datamover.controller import notify
from tests.ground.procs import free_port

FINISHED = {
    "metadata": {"namespace": "migrations", "name": "photos", "uid": "u-1", "generation": 1},
    "spec": {"destination": {"bucket": "b"}},
    "status": {"phase": "succeeded", "reason": "Succeeded", "message": "all objects migrated and verified",
               "startTime": "2026-12-03T10:00:00Z", "completionTime": "2026-12-03T10:05:00Z",
               "workers": {"0": {"state": "succeeded", "objectsTotal": 3, "objectsMigrated": 3, "bytesTotal": 30,
                                 "bytesMigrated": 30}}},
}


class Receiver(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.received.append((self.headers["Content-Type"], body))
        self.send_response(Receiver.answers.pop(0) if Receiver.answers else 204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.answers, Receiver.received = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/datamover?token=secret"
    finally:
        server.shutdown()


def test_the_event_names_the_job_its_phase_and_its_counts() -> None:
    event = notify.cloud_event(FINISHED)
    assert event["specversion"] == "1.0" and event["type"] == "io.datamover.migrationjob.finished"
    assert event["source"] == "/apis/datamover.io/v1alpha1/namespaces/migrations/migrationjobs/photos"
    assert event["id"] == "u-1/succeeded" and event["time"] == "2026-12-03T10:05:00Z"
    assert event["data"]["phase"] == "succeeded" and event["data"]["progress"]["objectsMigrated"] == 3


def test_a_failing_webhook_is_retried_with_back_off_until_it_answers(receiver: str) -> None:
    Receiver.answers = [503, 500]
    pauses: list[float] = []
    assert notify.deliver(receiver, notify.cloud_event(FINISHED), sleep=pauses.append) == (True, 3, "")
    assert pauses == [1.0, 2.0]
    assert [ct for ct, _ in Receiver.received] == ["application/cloudevents+json"] * 3
    assert Receiver.received[-1][1]["id"] == "u-1/succeeded"


def test_a_refusal_is_not_retried_and_an_unreachable_webhook_gives_up(receiver: str) -> None:
    Receiver.answers = [404]
    assert notify.deliver(receiver, {}, sleep=lambda _: None) == (False, 1, "HTTP 404")
    delivered, attempts, error = notify.deliver(f"http://127.0.0.1:{free_port()}/", {}, sleep=lambda _: None)
    assert (delivered, attempts) == (False, notify.ATTEMPTS) and "refused" in error.lower()
    assert "token" not in error


@pytest.mark.parametrize(("url", "ok"), [("https://hooks.example.com/x?token=1", True), ("http://10.0.0.1:8080/", True),
                                         ("hooks.example.com/x", False), ("ftp://x/y", False), ("", False)])
def test_only_http_urls_are_webhooks(url: str, ok: bool) -> None:
    assert (notify.url_problem(url) is None) == ok
