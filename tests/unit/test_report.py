"""The per-object report (spec.report) against moto: one line per object with the right action, chunks written as the
run goes, a summary line last, a full queue that drops lines instead of stalling the copy, and the CLI's rendering."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from datamover.backends.base import ErrorKind, ObjectStore, ObjectSummary, StoreError
from datamover.backends.s3 import S3Store
from datamover.cli.main import render_report
from datamover.engine import AbortSignal, MigrationOptions, ObjectFilter, Outcome, migrate
from datamover.engine.context import ObjectCopy
from datamover.engine.fsm import ObjectState
from datamover.engine.report import ReportWriter, failed_keys, read_report
from tests.fakekube import Answer, Request, client_of, serve
from tests.unit import RecordingSink, moto_s3, store

OPTIONS = MigrationOptions(progress_interval=0, concurrency=4)


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def objects(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["key"]: line for line in lines if line["record"] == "object"}


def test_every_object_gets_one_line_with_its_action_and_a_summary_comes_last(moto: None) -> None:
    source, destination, reports = store("src", "in/"), store("dst", "out/", "b"), store("rep", "r/")
    for index in range(5):
        source.client.put_object(Bucket="src", Key=f"in/{index}.txt", Body=b"x" * index)
    source.client.put_object(Bucket="src", Key="in/skip.log", Body=b"not selected")
    migrate(source, destination, OPTIONS, AbortSignal(), RecordingSink())  # a first run: all copied
    source.client.put_object(Bucket="src", Key="in/new.txt", Body=b"new")

    writer = ReportWriter(reports, "r/", 0, "run1")
    options = MigrationOptions(progress_interval=0, filter=ObjectFilter(exclude=("*.log",)))
    result = migrate(source, destination, options, AbortSignal(), RecordingSink(), report=writer)
    summary = writer.close()

    assert result.outcome is Outcome.SUCCEEDED
    lines = list(read_report(reports, "r/"))
    by_key = objects(lines)
    assert by_key["in/new.txt"]["action"] == "copied"
    assert by_key["in/new.txt"]["destinationKey"] == "out/new.txt"
    assert by_key["in/new.txt"]["size"] == 3
    assert by_key["in/new.txt"]["etag"] == source.stat("in/new.txt").etag  # type: ignore[union-attr]
    assert {by_key[f"in/{i}.txt"]["action"] for i in range(5)} == {"skipped-identical"}
    assert by_key["in/skip.log"]["action"] == "excluded"
    assert len(by_key) == 7 and len([line for line in lines if line["record"] == "object"]) == 7
    assert lines[-1]["record"] == "summary" and lines[-1]["complete"] is True
    assert lines[-1]["counts"] == {"copied": 1, "excluded": 1, "skipped-identical": 5}
    assert lines[-1]["linesWritten"] == 7 == summary.lines_written
    assert all(key.startswith("r/worker-0000/run1/") for key in _keys(reports))


def test_a_move_reports_deleted_source(moto: None) -> None:
    source, destination, reports = store("src"), store("dst", account="b"), store("rep")
    source.client.put_object(Bucket="src", Key="a", Body=b"a")
    writer = ReportWriter(reports, "", 3, "r")
    migrate(source, destination, MigrationOptions(remain_source=False), AbortSignal(), RecordingSink(),
            report=writer)
    writer.close()
    (line,) = objects(list(read_report(reports, ""))).values()
    assert line["action"] == "deleted-source"


class FailingPuts(S3Store):
    """A destination that refuses one key, as a bucket policy would."""

    def put(self, key: str, body: bytes, attributes: Any, content_md5: str) -> str:
        if key.endswith("refused"):
            raise StoreError(ErrorKind.OTHER, f"refused {key}", code="AccessDenied")
        return super().put(key, body, attributes, content_md5)


def test_a_failed_object_carries_its_error_code_and_message(moto: None) -> None:
    source, reports = store("src"), store("rep")
    destination = FailingPuts(store("dst", account="b").config)
    for key in ("ok", "refused"):
        source.client.put_object(Bucket="src", Key=key, Body=b"data")
    writer = ReportWriter(reports, "", 0, "r")
    result = migrate(source, destination, OPTIONS, AbortSignal(), RecordingSink(), report=writer)
    writer.close()
    assert result.outcome is Outcome.FAILED
    lines = list(read_report(reports, ""))
    by_key = objects(lines)
    assert by_key["ok"]["action"] == "copied" and "errorCode" not in by_key["ok"]
    assert by_key["refused"]["action"] == "failed"
    assert by_key["refused"]["errorCode"] == "AccessDenied"
    assert "refused" in by_key["refused"]["error"]
    assert failed_keys(lines) == ["refused"]


def _keys(target: S3Store) -> list[str]:
    listed = target.client.list_objects_v2(Bucket=target.bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def _copy(key: str, state: ObjectState = ObjectState.MIGRATED) -> ObjectCopy:
    return ObjectCopy(source=ObjectSummary(key, 1, "e"), destination_key=key, state=state)


def test_lines_are_flushed_in_chunks_before_the_end(moto: None) -> None:
    reports = store("rep")
    writer = ReportWriter(reports, "p/", 1, "r", flush_lines=10, flush_seconds=60)
    for index in range(25):
        writer.record(_copy(f"k{index:02d}"), True, 0.0, 1.0)
    # Two full chunks land while the run goes on (a crash now would lose only the 5 lines not yet flushed).
    for _ in range(200):
        if len(_keys(reports)) == 2:
            break
        threading.Event().wait(0.05)
    assert _keys(reports) == ["p/worker-0001/r/000001.jsonl", "p/worker-0001/r/000002.jsonl"]
    writer.close()
    lines = list(read_report(reports, "p/"))
    assert [line["key"] for line in lines[:-1]] == [f"k{index:02d}" for index in range(25)]
    assert lines[-1]["linesWritten"] == 25


class SlowStore:
    """A report store whose writes wait until released: the copy path must not wait with them."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.release = inner, threading.Event()

    def put(self, key: str, body: bytes, attributes: Any, content_md5: str) -> str:
        self.release.wait()
        return self.inner.put(key, body, attributes, content_md5)


def test_a_full_queue_drops_lines_and_says_so_instead_of_blocking(moto: None) -> None:
    reports = store("rep")
    slow = SlowStore(reports)
    writer = ReportWriter(slow, "", 0, "r", flush_lines=1, max_queued=5)  # type: ignore[arg-type]
    done = threading.Event()

    def record_many() -> None:
        for index in range(50):
            writer.record(_copy(f"k{index}"), True, 0.0, 1.0)
        done.set()

    threading.Thread(target=record_many).start()
    assert done.wait(10), "recording waited for the report store"
    slow.release.set()
    summary = writer.close()
    assert summary.lines_dropped > 0 and summary.lines_written + summary.lines_dropped == 50
    last = list(read_report(reports, ""))[-1]
    assert last["complete"] is False and last["linesDropped"] == summary.lines_dropped


def test_the_latest_run_of_a_key_decides_whether_it_failed() -> None:
    lines = [{"record": "object", "key": "a", "action": "failed"}, {"record": "object", "key": "b", "action": "failed"},
             {"record": "object", "key": "a", "action": "copied"}, {"record": "summary", "worker": 0}]
    assert failed_keys(lines) == ["b"]
    assert failed_keys(lines, ("copied",)) == ["a"]


def test_the_cli_prints_each_workers_summary_and_the_failed_keys() -> None:
    lines = [
        {"record": "object", "key": "a", "action": "copied"},
        {"record": "object", "key": "b", "action": "failed", "errorCode": "AccessDenied", "error": "refused b"},
        {"record": "summary", "worker": 0, "counts": {"copied": 1, "failed": 1}, "complete": True, "linesDropped": 0},
    ]
    text = render_report("job", "bucket 'r'", lines, limit=10)
    assert "worker 0   1 copied, 1 failed" in text
    assert "1 failed key(s):" in text and "b  AccessDenied: refused b" in text
    assert json.dumps(lines)  # the lines are plain JSON values


class FakeApi:
    """The MigrationJob API as the CLI and the worker use it (behind tests/fakekube.py): one job to get, status
    patches recorded."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body, self.patches = body, []  # type: list[Any]

    def respond(self, request: Request) -> Answer:
        job = "/apis/datamover.io/v1alpha1/namespaces/ns/migrationjobs/photos"
        if request.method == "GET":
            assert request.path == job
            return Answer(body=self.body)
        assert (request.method, request.path, request.headers["content-type"]) == (
            "PATCH", f"{job}/status", "application/merge-patch+json")
        self.patches.append(request.body)
        return Answer(body=self.body)


JOB: dict[str, Any] = {
    "metadata": {"name": "photos", "namespace": "ns", "uid": "u-1"},
    "spec": {"source": {"bucket": "src"}, "destination": {"bucket": "dst", "prefix": "out/"}, "report": {}},
}


def test_the_worker_names_the_report_in_status_and_the_cli_reads_it_back(
    moto: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datamover.api import MigrationSpec
    from datamover.cli import main as cli
    from datamover.worker import main as worker

    store("dst")  # the bucket the report goes to by default
    api = FakeApi(JOB)
    with serve(api.respond) as server:
        writer = worker._open_report(client_of(server), JOB, MigrationSpec.from_spec(JOB["spec"]), 2,
                                     {"DATAMOVER_POD": "photos-2-x7k2q"})
        assert writer is not None
        assert api.patches == [{"status": {"report": {"type": "s3", "bucket": "dst",
                                                      "prefix": "datamover-reports/ns/photos/u-1/"}}}]
        assert writer.location.startswith("datamover-reports/ns/photos/u-1/worker-0002/")
        assert writer.location.endswith("-x7k2q/")
        copy = _copy("k1", ObjectState.FAILED)
        copy.error, copy.error_code = "refused k1", "AccessDenied"
        writer.record(copy, True, 0.0, 1.0)
        writer.record(_copy("k2"), True, 0.0, 1.0)
        writer.close()

        monkeypatch.setattr(cli, "_secret", lambda api, namespace, name: {})  # the ambient (moto's) credentials
        out = io.StringIO()
        assert cli.report(client_of(server), "ns", "photos", limit=10, out=out) == 0
    text = out.getvalue()
    assert "prefix datamover-reports/ns/photos/u-1/" in text
    assert "worker 2   1 copied, 1 failed" in text and "k1  AccessDenied: refused k1" in text


class BrokenStore:
    """A report store that fails every write, and not even with a StoreError."""

    def put(self, key: str, body: bytes, attributes: Any, content_md5: str) -> str:
        raise RuntimeError("the report store is on fire")


def test_a_report_store_that_fails_every_write_loses_lines_but_never_stops_the_writer() -> None:
    writer = ReportWriter(BrokenStore(), "", 0, "r", flush_lines=2, max_queued=3)  # type: ignore[arg-type]
    for index in range(20):
        writer.record(_copy(f"k{index}"), True, 0.0, 1.0)
    summary = writer.close()
    assert summary.lines_written == 0 and summary.lines_dropped == 20
