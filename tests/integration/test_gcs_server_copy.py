"""GCS to GCS by server-side rewrite on fake-gcs-server: exact, pinned to the listed generation, never through us.

Judged through google-cloud-storage directly (bytes, content headers, metadata, class), never through the backend
under test. fake-gcs-server finishes every rewrite in one call; real GCS takes several for a large object, each
continuing from the last one's rewriteToken, so a small proxy (`SteppedRewrites`) makes the emulator answer the first
call of each rewrite as GCS does mid-copy ("not done, here is a token"), and the engine's loop and its abort
checkpoint between calls meet the answer they would on GCS.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import storage

from datamover.backends.base import ErrorKind, ObjectInfo, StoreError, server_side_copier
from datamover.backends.gcs import UPLOAD_AREA, GcsConfig, GcsStore
from datamover.engine import AbortSignal, MigrationOptions, MigrationResult, Outcome, migrate
from tests.ground.clouds import FakeGcsServer
from tests.ground.plugin_clouds import ContainerFactory
from tests.integration.test_store_conformance_clouds import gcs_config
from tests.unit import RecordingSink

MiB = 1024 * 1024
OPTIONS: dict[str, Any] = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 2,
                           "part_concurrency": 2, "progress_interval": 0.2}
HEADERS = {"content_type": "text/csv", "content_encoding": "gzip", "cache_control": "max-age=60",
           "content_disposition": 'attachment; filename="r.csv"', "content_language": "fr"}
# Two small objects and one above the multipart threshold, which a rewrite copies whole too.
SIZES = {"in/a.csv": 1000, "in/dir/ünï b.csv": 2000, "in/big.csv": 5 * MiB + 123}


class NoReads(GcsStore):
    """The backend with its byte path refused: a copy that reads or writes any byte through the worker fails."""

    def download(self, blob: storage.Blob, start: int, end: int, info: ObjectInfo) -> bytes:
        raise AssertionError(f"bytes of {info.key!r} passed through the worker")


def fill(client: storage.Client, bucket: str) -> dict[str, bytes]:
    bodies = {key: os.urandom(size) for key, size in SIZES.items()}
    for key, body in bodies.items():
        blob = client.bucket(bucket).blob(key)
        for name, value in HEADERS.items():
            setattr(blob, name, value)
        blob.metadata = {"owner": "ops", "k-2": "v 2", "key": key}
        blob.upload_from_string(body, content_type=HEADERS["content_type"])
    return bodies


def judge(client: storage.Client, source: str, destination: str, bodies: dict[str, bytes]) -> None:
    """Every key at the destination exactly as the source wrote it (bytes, headers, metadata, class); nothing else."""
    written = {blob.name: blob for blob in client.list_blobs(destination)}
    assert sorted(written) == sorted("out/" + key[3:] for key in bodies), "nothing else (no upload area either)"
    for key, body in bodies.items():
        blob = written["out/" + key[3:]]  # as listed (a download would overwrite its fields from its headers)
        assert {name: getattr(blob, name) for name in HEADERS} == HEADERS, key
        assert blob.metadata == {"owner": "ops", "k-2": "v 2", "key": key}, key
        assert blob.storage_class == "STANDARD", key
        assert hashlib.md5(blob.download_as_bytes(raw_download=True)).digest() == hashlib.md5(body).digest(), key
    assert not [b.name for b in client.list_blobs(source) if UPLOAD_AREA in b.name]


def run(source: GcsConfig, destination: GcsConfig, abort: AbortSignal | None = None, **options: Any) -> MigrationResult:
    return migrate(NoReads(source), NoReads(destination), MigrationOptions(**{**OPTIONS, **options}),
                   abort or AbortSignal(), RecordingSink())


def test_a_move_between_gcs_buckets_is_rewritten_exactly_without_a_byte_through_the_worker(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory,
) -> None:
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    bodies = fill(client, source)
    assert server_side_copier(GcsStore(gcs_config(fake_gcs, destination)), GcsStore(gcs_config(fake_gcs, source)))

    result = run(gcs_config(fake_gcs, source, "in/"), gcs_config(fake_gcs, destination, "out/"), remain_source=False)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    judge(client, source, destination, bodies)
    assert [blob.name for blob in client.list_blobs(source)] == [], "a move leaves nothing at the source"


def test_a_pinned_rewrite_of_a_generation_that_is_gone_copies_nothing(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory,
) -> None:
    client, source_bucket, destination_bucket = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    source = GcsStore(gcs_config(fake_gcs, source_bucket))
    destination = GcsStore(gcs_config(fake_gcs, destination_bucket))
    client.bucket(source_bucket).blob("k").upload_from_string(b"first")
    listed = source.stat("k")
    assert listed is not None
    client.bucket(source_bucket).blob("k").upload_from_string(b"second, after the listing")

    with pytest.raises(StoreError) as changed:
        destination.copy_object(source, "k", "k", listed.etag)
    assert changed.value.kind is ErrorKind.PRECONDITION, changed.value
    client.bucket(source_bucket).delete_blob("k")
    with pytest.raises(StoreError) as gone:
        destination.copy_object(source, "k", "k", listed.etag)
    assert gone.value.kind is ErrorKind.NOT_FOUND, gone.value
    assert list(client.list_blobs(destination_bucket)) == [], "neither version was copied"


def test_a_source_rewritten_after_listing_is_copied_as_one_whole_version(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory,
) -> None:
    """The rewrite pinned to the listed generation fails; as for S3 and Azure, the engine then stats the object and
    copies the version it finds, pinned to that one: the new bytes with the new metadata, never a mix."""
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    bodies = fill(client, source)
    newer = os.urandom(3000)

    def overwrite(checkpoint: str, key: str | None) -> None:
        if checkpoint == "before_object" and key == "in/a.csv":
            blob = client.bucket(source).blob(key)
            blob.metadata = {"owner": "ops", "k-2": "v 2", "key": key}
            for name, value in HEADERS.items():
                setattr(blob, name, value)
            blob.upload_from_string(newer, content_type=HEADERS["content_type"])

    result = run(gcs_config(fake_gcs, source, "in/"), gcs_config(fake_gcs, destination, "out/"),
                 AbortSignal(on_checkpoint=overwrite))

    assert result.outcome is Outcome.SUCCEEDED, result.error
    judge(client, source, destination, {**bodies, "in/a.csv": newer})
    rerun = run(gcs_config(fake_gcs, source, "in/"), gcs_config(fake_gcs, destination, "out/"))
    assert rerun.progress.objects_skipped == len(bodies), "a rewrite keeps md5Hash: a re-run copies nothing again"


def test_a_class_the_rewrite_does_not_keep_fails_the_object_and_leaves_nothing(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory,
) -> None:
    """fake-gcs-server (v1.56.1) writes every rewrite in STANDARD (GCS writes the class named): the copy in the wrong
    class is removed and the object fails, rather than being left degraded."""
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    cold = client.bucket(source).blob("in/cold")
    cold.storage_class = "NEARLINE"
    cold.upload_from_string(b"cold bytes")

    result = run(gcs_config(fake_gcs, source, "in/"), gcs_config(fake_gcs, destination, "out/"))

    assert (result.outcome, result.failed_keys) == (Outcome.FAILED, ("in/cold",)), result.error
    assert "StorageClassNotKept" in (result.error or "") or "NEARLINE" in (result.error or ""), result.error
    assert list(client.list_blobs(destination)) == []
    assert client.bucket(source).get_blob("in/cold").download_as_bytes() == b"cold bytes"


# -- a rewrite in several calls, as GCS answers for a large object ----------------------------------------------

class SteppedRewrites:
    """An HTTP proxy in front of fake-gcs-server: the first call of each rewrite is answered "not done" with a token
    (as GCS answers mid-copy), the call carrying that token goes to the emulator without it; all else is relayed."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rewrites: list[str] = []  # the query of every rewrite call, in order
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if "/rewriteTo/" in url.path:
                    proxy.rewrites.append(url.query)
                    if "rewriteToken" not in query:
                        self._answer(200, {"kind": "storage#rewriteResponse", "totalBytesRewritten": "0",
                                           "objectSize": "0", "done": False, "rewriteToken": "step-1"})
                        return
                    query.pop("rewriteToken")
                path = url.path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.upstream + path, data=body, headers=headers,
                                          timeout=30, allow_redirects=False)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def stepped(fake_gcs: FakeGcsServer) -> Iterator[SteppedRewrites]:
    proxy = SteppedRewrites(fake_gcs.endpoint)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.server.shutdown()
    proxy.server.server_close()
    thread.join()


def test_a_rewrite_in_several_calls_continues_from_its_token(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory, stepped: SteppedRewrites,
) -> None:
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    bodies = fill(client, source)

    result = run(replace(gcs_config(fake_gcs, source, "in/"), endpoint=stepped.endpoint),
                 replace(gcs_config(fake_gcs, destination, "out/"), endpoint=stepped.endpoint))

    assert result.outcome is Outcome.SUCCEEDED, result.error
    judge(client, source, destination, bodies)
    continued = [query for query in stepped.rewrites if "rewriteToken=step-1" in query]
    assert len(stepped.rewrites) == 2 * len(bodies) and len(continued) == len(bodies), stepped.rewrites
    assert all("sourceGeneration=" in query for query in stepped.rewrites), "every call pinned to the generation"


def test_a_source_rewritten_between_the_calls_of_a_rewrite_is_not_copied(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory, stepped: SteppedRewrites,
) -> None:
    """The pin of the rewrite itself (sourceGeneration), past the backend's read of the source's attributes."""
    client, source_bucket, destination_bucket = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    source = GcsStore(replace(gcs_config(fake_gcs, source_bucket), endpoint=stepped.endpoint))
    destination = GcsStore(replace(gcs_config(fake_gcs, destination_bucket), endpoint=stepped.endpoint))
    client.bucket(source_bucket).blob("k").upload_from_string(b"first")
    listed = source.stat("k")
    assert listed is not None

    def overwrite() -> None:
        client.bucket(source_bucket).blob("k").upload_from_string(b"second, during the copy")

    with pytest.raises(StoreError) as changed:
        destination.copy_object(source, "k", "k", listed.etag, between_requests=overwrite)
    assert changed.value.kind is ErrorKind.PRECONDITION, changed.value
    assert len(stepped.rewrites) == 2 and list(client.list_blobs(destination_bucket)) == []


def test_an_abort_between_the_calls_of_a_rewrite_stops_it_and_leaves_nothing(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory, stepped: SteppedRewrites,
) -> None:
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    bodies = fill(client, source)
    abort = AbortSignal.at_checkpoint("between_chunks")  # the first pause between two calls of a rewrite

    result = run(replace(gcs_config(fake_gcs, source, "in/"), endpoint=stepped.endpoint),
                 replace(gcs_config(fake_gcs, destination, "out/"), endpoint=stepped.endpoint), abort,
                 concurrency=1, remain_source=False)

    assert abort.requested and result.outcome is Outcome.ABORTED, result.error
    assert len(stepped.rewrites) == 1, "no call of the rewrite after the abort"
    assert list(client.list_blobs(destination)) == [], "a rewrite stopped between calls leaves no fragment"
    source_left = {blob.name: blob.download_as_bytes(raw_download=True) for blob in client.list_blobs(source)}
    assert source_left == bodies, "the source is untouched"


def test_a_crash_in_a_gcs_move_by_rewrite_leaves_every_object_in_one_place_exact(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory, tmp_path: Path,
) -> None:
    """SIGKILL just before the second source delete (its copy verified, the delete not sent): nothing partial, no
    fragment; one key is in both places, identical, and a re-run finishes the move."""
    client, source, destination = fake_gcs.client(), gcs_bucket(), gcs_bucket()
    bodies = fill(client, source)
    source_config, destination_config = gcs_config(fake_gcs, source, "in/"), gcs_config(fake_gcs, destination, "out/")
    spec = {"source": {"kind": "gcs", **asdict(source_config)},
            "destination": {"kind": "gcs", **asdict(destination_config)}, "mode": "move",
            "kill": "before_delete_source", "occurrence": 2, "record": str(tmp_path / "record.json"),
            "options": {**OPTIONS, "concurrency": 1}}
    child = subprocess.run([sys.executable, "-m", "tests.ground.crash_runner"], capture_output=True, text=True,
                           env={**os.environ, "DM_CRASH_SPEC": json.dumps(spec)}, timeout=180, check=False,
                           cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == -signal.SIGKILL, child.stdout[-2000:] + child.stderr[-2000:]

    at_source = {b.name: b.download_as_bytes(raw_download=True) for b in client.list_blobs(source)}
    at_destination = {b.name: b.download_as_bytes(raw_download=True) for b in client.list_blobs(destination)}
    for key, body in bodies.items():
        copied = at_destination.get("out/" + key[3:])
        assert at_source.get(key) in (body, None) and copied in (body, None), key
        assert body in (at_source.get(key), copied), f"{key} lost"
    assert len(at_destination) == 2 and len(at_source) == 2, "two copies verified, one source deleted"

    result = run(source_config, destination_config, remain_source=False)
    assert result.outcome is Outcome.SUCCEEDED, result.error
    judge(client, source, destination, bodies)
    assert list(client.list_blobs(source)) == []
