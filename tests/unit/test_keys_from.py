"""spec.keysFrom against moto: the three readers (report, lines, S3 Inventory CSV), workers splitting the keys without
overlap, a key gone from the source, the spec's parsing, and what `kubectl datamover retry` creates."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from datamover.api import KeysFromSpec, MigrationSpec, SpecError
from datamover.cli.main import retry_job
from datamover.engine import AbortSignal, MigrationOptions, Outcome, migrate
from datamover.engine.keys import KeysFormat, inventory_keys, manifest_keys, read_keys, report_keys
from datamover.engine.report import ReportWriter, read_report
from tests.fakekube import Answer, Request, client_of, serve
from tests.unit import RecordingSink, moto_s3, store


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def test_a_manifest_gives_one_key_per_line_skipping_blank_lines(moto: None) -> None:
    manifests = store("man")
    manifests.client.put_object(Bucket="man", Key="keys.txt", Body="a/1\r\nb c/ü\n\n  \nlast".encode())
    assert list(manifest_keys(manifests, "keys.txt")) == ["a/1", "b c/ü", "last"]


@pytest.mark.parametrize("name", ["inventory.csv", "inventory.csv.gz"])
def test_an_s3_inventory_csv_gives_its_url_decoded_key_column(moto: None, name: str) -> None:
    text = '"bucket","a/plain.txt","12"\n"bucket","with+space%2Bplus.txt","3"\n"bucket","%C3%BC%2Fx","1"\n'
    body = gzip.compress(text.encode()) if name.endswith(".gz") else text.encode()
    manifests = store("man")
    manifests.client.put_object(Bucket="man", Key=name, Body=body)
    assert list(inventory_keys(manifests, name)) == ["a/plain.txt", "with space+plus.txt", "ü/x"]


def test_a_report_gives_the_keys_whose_last_line_failed(moto: None) -> None:
    reports = store("rep", "rep/")
    body = ('{"record":"object","key":"a","action":"failed"}\n{"record":"object","key":"b","action":"copied"}\n'
            '{"record":"object","key":"c","action":"failed"}\n')
    reports.client.put_object(Bucket="rep", Key="rep/worker-0000/run1/000001.jsonl", Body=body.encode())
    later = '{"record":"object","key":"a","action":"copied"}\n{"record":"summary","worker":0}\n'
    reports.client.put_object(Bucket="rep", Key="rep/worker-0000/run2/000001.jsonl", Body=later.encode())
    assert report_keys(reports, "rep/") == ["c"]
    assert list(read_keys(reports, KeysFormat.REPORT, "", ("copied",))) == ["b", "a"]


def test_workers_split_the_keys_without_overlap_and_move_only_them(moto: None) -> None:
    source, destination, reports = store("src", "in/"), store("dst", "out/", "b"), store("rep")
    for index in range(40):
        source.client.put_object(Bucket="src", Key=f"in/{index:02d}", Body=b"x")
    wanted = [f"in/{index:02d}" for index in range(0, 40, 3)] + ["in/gone", "elsewhere/k", "in/03"]
    results = []

    def worker(index: int) -> None:
        writer = ReportWriter(reports, "", index, "r")
        options = MigrationOptions(shard_index=index, shard_count=3, progress_interval=0)
        results.append(migrate(source, destination, options, AbortSignal(), RecordingSink(), report=writer,
                               keys=iter(wanted)))
        writer.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    listed = destination.client.list_objects_v2(Bucket="dst").get("Contents", [])
    assert sorted(item["Key"] for item in listed) == sorted(f"out/{index:02d}" for index in range(0, 40, 3))
    lines = [line for line in read_report(reports, "") if line["record"] == "object"]
    assert sorted(line["key"] for line in lines) == sorted(set(wanted))  # each key once, across the workers
    actions = {line["key"]: (line["action"], line.get("errorCode")) for line in lines}
    assert actions["in/gone"] == ("failed", "NoSuchKey")
    assert actions["elsewhere/k"] == ("failed", "OutsidePrefix")
    assert actions["in/03"] == ("copied", None)
    assert sum(r.progress.objects_failed for r in results) == 2
    assert {r.outcome for r in results} <= {Outcome.SUCCEEDED, Outcome.FAILED}


def _spec(**extra: Any) -> dict[str, Any]:
    return {"source": {"bucket": "a"}, "destination": {"bucket": "b", "prefix": "out/"}, **extra}


def test_keys_from_is_parsed_with_its_defaults_and_refused_when_incomplete() -> None:
    parsed = MigrationSpec.from_spec(_spec(keysFrom={"location": {"bucket": "b", "prefix": "rep/"}}))
    assert parsed.keys_from == KeysFromSpec(parsed.keys_from.location, KeysFormat.REPORT, "",  # type: ignore[union-attr]
                                            ("failed",))
    with pytest.raises(SpecError, match=r"spec\.keysFrom\.key is required"):
        MigrationSpec.from_spec(_spec(keysFrom={"location": {"bucket": "b"}, "format": "lines"}))
    with pytest.raises(SpecError, match=r"spec\.keysFrom\.actions"):
        MigrationSpec.from_spec(_spec(keysFrom={"location": {"bucket": "b"}, "actions": ["lost"]}))


def test_retry_copies_the_spec_and_points_keys_from_at_the_report() -> None:
    body = {"metadata": {"name": "photos", "namespace": "ns", "uid": "u-1"},
            "spec": _spec(report={}, abort=True, parallelism=2,
                          destination={"bucket": "b", "prefix": "out/", "endpoint": "https://b.example",
                                       "credentialsSecretRef": {"name": "cloud-b"}})}
    job = retry_job(body, "photos-retry-1", ["failed"])
    assert job["metadata"]["name"] == "photos-retry-1" and job["metadata"]["namespace"] == "ns"
    spec = job["spec"]
    assert "abort" not in spec and spec["parallelism"] == 2 and spec["report"] == {}
    assert spec["keysFrom"]["format"] == "report" and spec["keysFrom"]["actions"] == ["failed"]
    location = spec["keysFrom"]["location"]
    assert (location["bucket"], location["prefix"]) == ("b", "datamover-reports/ns/photos/u-1/")
    assert location["endpoint"] == "https://b.example" and location["credentialsSecretRef"] == {"name": "cloud-b"}
    assert MigrationSpec.from_spec(spec).keys_from is not None  # what it creates parses
    timed = retry_job({**body, "spec": {**body["spec"], "filter": {"modifiedAfter": "720h", "exclude": ["*.tmp"]}}},
                      "photos-retry-2", ["failed"])
    assert timed["spec"]["filter"] == {"exclude": ["*.tmp"]}  # the API server refuses time bounds with keysFrom
    with pytest.raises(ValueError, match=r"no spec\.report"):
        retry_job({**body, "spec": _spec()}, "x", ["failed"])


class FakeApi:
    """The MigrationJob API as `retry` uses it (behind tests/fakekube.py): one job to get, the names taken, creations
    recorded."""

    def __init__(self, body: dict[str, Any], taken: list[str]) -> None:
        self.body, self.taken, self.created = body, taken, []  # type: dict[str, Any], list[str], list[Any]

    def respond(self, request: Request) -> Answer:
        jobs = "/apis/datamover.io/v1alpha1/namespaces/ns/migrationjobs"
        if (request.method, request.path) == ("GET", f"{jobs}/photos"):
            return Answer(body=self.body)
        if (request.method, request.path) == ("GET", jobs):
            return Answer(body={"items": [{"metadata": {"name": name}} for name in self.taken]})
        assert (request.method, request.path) == ("POST", jobs)
        self.created.append(request.body)
        return Answer(201, request.body)


def test_retry_takes_the_first_free_name_and_waits_for_the_job_to_end() -> None:
    import io

    from datamover.cli.main import retry

    body = {"metadata": {"name": "photos", "namespace": "ns", "uid": "u-1"}, "spec": _spec(report={}),
            "status": {"phase": "failed"}}
    api = FakeApi(body, ["photos", "photos-retry-1", "photos-retry-3"])
    out = io.StringIO()
    with serve(api.respond) as server:
        assert retry(client_of(server), "ns", "photos", actions=["failed"], out=out) == 0
    assert [job["metadata"]["name"] for job in api.created] == ["photos-retry-2"]
    assert "photos-retry-2 created" in out.getvalue()
    running = FakeApi({**body, "status": {"phase": "running"}}, ["photos"])
    with serve(running.respond) as server:
        assert retry(client_of(server), "ns", "photos", actions=["failed"], out=out) == 1
    assert not running.created
