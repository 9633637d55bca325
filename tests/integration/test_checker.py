"""The failure matrix's checker and fault proxy, tested themselves: each must be able to say "wrong"."""

from __future__ import annotations

import os
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from tests.ground.checker import (
    MIGRATED,
    UNTOUCHED,
    VIOLATING,
    ObjectRecord,
    Side,
    capture_inventory,
    check,
    judge_key,
)
from tests.ground.faultproxy import Request, Rule, fault_proxy
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server

pytestmark = pytest.mark.ground

MiB = 1024 * 1024
ORIGINAL = ObjectRecord(size=3, sha256="a" * 64, headers={"content-type": "text/plain"}, metadata={"owner": "x"})


def variant(**changes: Any) -> ObjectRecord:
    fields = {"size": ORIGINAL.size, "sha256": ORIGINAL.sha256, "headers": ORIGINAL.headers,
              "metadata": ORIGINAL.metadata, **changes}
    return ObjectRecord(**fields)


# -- the per-key rules, on every combination ------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "source", "destination", "state"), [
    ("copy", ORIGINAL, None, UNTOUCHED),
    ("copy", ORIGINAL, ORIGINAL, MIGRATED),
    ("copy", None, ORIGINAL, VIOLATING),  # a copy must not delete the source
    ("copy", ORIGINAL, variant(sha256="b" * 64), VIOLATING),  # same size, other bytes
    ("copy", ORIGINAL, variant(size=2), VIOLATING),
    ("copy", ORIGINAL, variant(metadata={"owner": "x", "datamover-source-etag": "abc"}), VIOLATING),  # foreign
    ("copy", ORIGINAL, variant(metadata={}), VIOLATING),  # metadata lost
    ("copy", ORIGINAL, variant(headers={"content-type": "binary/octet-stream"}), VIOLATING),
    ("copy", variant(sha256="c" * 64), None, VIOLATING),  # the source was changed
    ("move", ORIGINAL, None, UNTOUCHED),
    ("move", None, ORIGINAL, MIGRATED),
    ("move", ORIGINAL, ORIGINAL, UNTOUCHED),  # both places: allowed only where a crash explains it
    ("move", None, None, VIOLATING),  # lost
    ("move", None, variant(sha256="b" * 64), VIOLATING),  # source deleted, destination wrong: data lost
    ("move", ORIGINAL, variant(headers={}), VIOLATING),
])
def test_judge_key(mode: str, source: ObjectRecord | None, destination: ObjectRecord | None, state: str) -> None:
    assert judge_key("k", mode, ORIGINAL, source, destination).state == state


def test_both_places_after_a_move_is_a_problem_only_when_asked() -> None:
    from tests.ground.checker import Report

    verdict = judge_key("k", "move", ORIGINAL, ORIGINAL, ORIGINAL)
    report = Report(mode="move", verdicts={"k": verdict}, open_uploads=[], strays=[])
    assert verdict.both_places and report.problems() == []
    assert report.problems(both_places_ok=False) == ["'k': in both places after an aborted move"]
    assert report.problems(complete=True) != []


# -- against a real store: hand-made violating states ---------------------------------------------------------

def _side(server: S3Server, bucket: str, prefix: str) -> Side:
    return Side(server.endpoint, server.access_key, server.secret_key, bucket, prefix)


def test_check_sees_wrong_bytes_metadata_strays_and_open_uploads(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    src_bucket, dst_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    src, dst = cloud_a.client(), cloud_b.client()
    headers: dict[str, Any] = {"ContentType": "text/csv", "ContentLanguage": "de", "CacheControl": "no-cache",
                               "Expires": "Wed, 21 Oct 2037 07:28:00 GMT", "Metadata": {"owner": "ops"}}
    bodies = {name: os.urandom(1000) for name in ("good", "same-size", "bad-meta", "untouched", "lost")}
    for name, body in bodies.items():
        src.put_object(Bucket=src_bucket, Key=f"in/{name}", Body=body, **headers)
    source, destination = _side(cloud_a, src_bucket, "in/"), _side(cloud_b, dst_bucket, "out/")
    inventory = capture_inventory(source)
    assert set(inventory) == set(bodies)
    assert inventory["good"].headers["content-language"] == "de" and inventory["good"].metadata == {"owner": "ops"}

    dst.put_object(Bucket=dst_bucket, Key="out/good", Body=bodies["good"], **headers)
    dst.put_object(Bucket=dst_bucket, Key="out/same-size", Body=os.urandom(1000), **headers)
    dst.put_object(Bucket=dst_bucket, Key="out/bad-meta", Body=bodies["bad-meta"],
                   **{**headers, "Metadata": {"owner": "ops", "datamover-source-etag": "x"}})
    dst.put_object(Bucket=dst_bucket, Key="out/extra", Body=b"nobody's")
    src.delete_object(Bucket=src_bucket, Key="in/lost")
    # An upload in a "folder": MinIO lists it only when asked for the whole bucket (or the exact key).
    upload_id = dst.create_multipart_upload(Bucket=dst_bucket, Key="out/deep/half.bin")["UploadId"]

    report = check(source, destination, "copy", inventory)

    states = {key: verdict.state for key, verdict in report.verdicts.items()}
    assert states == {"good": MIGRATED, "same-size": VIOLATING, "bad-meta": VIOLATING, "untouched": UNTOUCHED,
                      "lost": VIOLATING}
    assert "bytes differ" in report.verdicts["same-size"].detail
    assert "datamover-source-etag" in report.verdicts["bad-meta"].detail
    assert report.open_uploads == [("out/deep/half.bin", upload_id)]
    assert report.strays == ["out/extra"]
    problems = report.problems()
    assert len(problems) == 5 and any("open multipart upload" in p for p in problems), report.render()


def test_open_uploads_are_listed_across_pages() -> None:
    from tests.ground.checker import list_open_uploads

    class Paged:  # two pages, as AWS answers past 1000 uploads (MinIO ignores MaxUploads, so a stub it is)
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def list_multipart_uploads(self, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(kwargs)
            if "KeyMarker" not in kwargs:
                return {"Uploads": [{"Key": "a", "UploadId": "1"}], "IsTruncated": True, "NextKeyMarker": "a",
                        "NextUploadIdMarker": "1"}
            return {"Uploads": [{"Key": "b", "UploadId": "2"}], "IsTruncated": False}

    client = Paged()
    assert list_open_uploads(client, "bkt") == [("a", "1"), ("b", "2")]
    assert client.calls[1] == {"Bucket": "bkt", "KeyMarker": "a", "UploadIdMarker": "1"}


def test_an_upload_listed_but_not_held_is_a_ghost_not_a_fragment(
    cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    from tests.ground.checker import Report, holds_upload

    bucket, client = bucket_factory(cloud_b), cloud_b.client()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    client.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"x")
    assert holds_upload(client, bucket, "k", upload_id)
    # The state MinIO reaches when a complete is cut off after the commit: an ID nothing is stored under.
    client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    assert not holds_upload(client, bucket, "k", upload_id)

    report = Report(mode="copy", verdicts={}, open_uploads=[], strays=[], ghost_uploads=[("k", upload_id)])
    assert report.problems() == []
    assert f"listed but not held (a ghost, not a fragment) 'k' {upload_id}" in report.render()


# -- the fault proxy really injects its faults ----------------------------------------------------------------

def _through(proxy_endpoint: str, server: S3Server, attempts: int = 1, read_timeout: float = 5) -> Any:
    return boto3.client("s3", endpoint_url=proxy_endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name=server.region,
                        config=Config(s3={"addressing_style": "path"}, read_timeout=read_timeout,
                                      connect_timeout=2, retries={"total_max_attempts": attempts,
                                                                  "mode": "standard"}))


def test_proxy_relays_and_injects_each_fault(cloud_b: S3Server, bucket_factory: BucketFactory) -> None:
    bucket = bucket_factory(cloud_b)
    body = os.urandom(2 * MiB)
    with fault_proxy(cloud_b.endpoint, seed=1) as proxy:
        client = _through(proxy.endpoint, cloud_b)
        client.put_object(Bucket=bucket, Key="k", Body=body)
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == body

        proxy.set_rules([Rule("slowdown", limit=1)])
        with pytest.raises(ClientError) as error:
            client.head_bucket(Bucket=bucket)
        assert error.value.response["Error"]["Code"] in ("503", "SlowDown")

        proxy.set_rules([Rule("reset_request", match=lambda r: r.method == "PUT", limit=1)])
        with pytest.raises(Exception) as reset:
            client.put_object(Bucket=bucket, Key="k2", Body=body)
        assert not isinstance(reset.value, ClientError)

        proxy.set_rules([Rule("reset_response", match=lambda r: r.method == "GET", limit=1)])
        with pytest.raises(Exception):  # noqa: B017 - botocore raises one of several wire errors
            client.get_object(Bucket=bucket, Key="k")["Body"].read()

        proxy.set_rules([Rule("cut_response", match=Request.is_create_multipart, limit=1)])
        with pytest.raises(Exception):  # noqa: B017
            client.create_multipart_upload(Bucket=bucket, Key="big")
        # The server did create it: exactly the upload nobody heard about.
        assert len(cloud_b.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1

        proxy.set_rules([Rule("blackhole")])
        with pytest.raises((ReadTimeoutError, EndpointConnectionError)):
            _through(proxy.endpoint, cloud_b, read_timeout=1).head_bucket(Bucket=bucket)

        proxy.set_rules([Rule("latency", delay=0.05)])
        client.head_bucket(Bucket=bucket)
        assert [proxy.log.count(a) for a in ("slowdown", "reset_request", "reset_response", "cut_response",
                                             "blackhole", "latency")] == [1, 1, 1, 1, 1, 1]
    assert cloud_b.client().get_object(Bucket=bucket, Key="k")["Body"].read() == body
