"""The S3 backend: secrets stay out of repr and messages, transient errors are retried, permanent ones fail fast."""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import hashlib
import http.server
import logging
import random
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import botocore.utils
import pytest
from botocore.awsrequest import AWSResponse

from datamover.backends import open_store
from datamover.backends.base import ErrorKind, EtagKind, ObjectAttributes, OpenUpload, StoreError
from datamover.backends.s3 import S3Config, S3Store, _parse_timestamp, etag_kind
from datamover.engine import AbortSignal, MigrationOptions, Outcome, migrate
from tests.unit import RecordingSink, moto_s3, store

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def fail_first(target: S3Store, operation: str, times: int, status: int, code: str) -> list[str]:
    """Make the next `times` calls of `operation` answer an S3 error; returns a log of every attempt."""
    attempts: list[str] = []

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(operation)
        if len(attempts) > times:
            return None  # fall through to moto
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))  # type: ignore[arg-type]

    target.client.meta.events.register_first(f"before-send.s3.{operation}", handler)
    return attempts


def test_repr_and_messages_never_show_secrets(moto: None) -> None:
    config = S3Config(bucket="b", endpoint="http://minio:9000", access_key_id="AKIAX", secret_access_key=SECRET,
                      session_token="token-value")
    assert SECRET not in repr(config) and "token-value" not in repr(config)
    assert "http://minio:9000" in repr(config)
    source = store("src", "", "a")
    attempts = fail_first(source, "HeadObject", 1, 403, "AccessDenied")
    with pytest.raises(StoreError) as raised:
        source.stat("k")
    assert attempts == ["HeadObject"]
    assert raised.value.kind is ErrorKind.PERMANENT
    assert "secret-a" not in raised.value.message
    assert "bucket src" in raised.value.message and "key 'k'" in raised.value.message


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")])
def test_transient_errors_are_retried_by_botocore(moto: None, status: int, code: str) -> None:
    target = store("bkt", "", "a", max_attempts=4)
    target.client.put_object(Bucket="bkt", Key="k", Body=b"x")
    attempts = fail_first(target, "HeadObject", 2, status, code)
    info = target.stat("k")
    assert info is not None and info.size == 1
    assert len(attempts) == 3


def test_transient_errors_give_up_after_max_attempts(moto: None) -> None:
    target = store("bkt", "", "a", max_attempts=2)
    attempts = fail_first(target, "ListObjectsV2", 10, 503, "SlowDown")
    with pytest.raises(StoreError) as raised:
        target.list_page("", None)
    assert len(attempts) == 2 and raised.value.kind is ErrorKind.TRANSIENT


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"])
def test_permanent_errors_fail_fast_and_stop_the_worker(moto: None, code: str) -> None:
    source, destination = store("src", "", "a", max_attempts=5), store("dst", "", "b")
    for index in range(3):
        source.client.put_object(Bucket="src", Key=f"k{index}", Body=b"x")
    attempts = fail_first(destination, "PutObject", 100, 403 if code != "NoSuchBucket" else 404, code)
    result = migrate(source, destination, MigrationOptions(concurrency=1), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED
    assert len(attempts) == 1, "a permanent error was retried or the worker went on to other objects"
    assert result.error is not None and code in result.error and "bucket dst" in result.error
    assert "secret-b" not in result.error


def test_unreachable_endpoint_fails_naming_endpoint_and_bucket() -> None:
    config = S3Config(bucket="b", endpoint="http://127.0.0.1:9", region="us-east-1", access_key_id="a",
                      secret_access_key=SECRET, max_attempts=2, connect_timeout=1)
    source = open_store(config)
    result = migrate(source, source, MigrationOptions(), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "http://127.0.0.1:9" in result.error and "bucket b" in result.error and "unreachable" in result.error
    assert SECRET not in result.error


def test_addressing_style_and_tls_opt_out_reach_the_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = S3Store(S3Config(bucket="b", endpoint="https://lab:9000", addressing_style="path",
                            insecure_skip_tls_verify=True, access_key_id="a", secret_access_key=SECRET))
    assert path.client.meta.config.s3 == {"addressing_style": "path"}
    assert path.client._endpoint.http_session._verify is False
    assert "event=tls_verification_disabled endpoint=https://lab:9000 bucket=b" in caplog.text
    virtual = S3Store(S3Config(bucket="b", addressing_style="virtual", region="eu-west-1"))
    assert virtual.client.meta.config.s3 == {"addressing_style": "virtual"}
    with pytest.raises(ValueError):
        S3Config(bucket="b", addressing_style="sideways")  # type: ignore[arg-type]


def test_server_side_copy_needs_same_endpoint_and_credentials() -> None:
    def make(**overrides: Any) -> S3Store:
        fields: dict[str, Any] = {"bucket": "b", "endpoint": "http://a:9000", "access_key_id": "k",
                                  "secret_access_key": "s", **overrides}
        return S3Store(S3Config(**fields))

    assert make().can_copy_from(make(bucket="other"))
    assert not make().can_copy_from(make(endpoint="http://b:9000"))
    assert not make().can_copy_from(make(secret_access_key="other"))


def test_etag_kinds() -> None:
    assert etag_kind("5d41402abc4b2a76b9719d911017c592", None, False) is EtagKind.MD5
    assert etag_kind("5d41402abc4b2a76b9719d911017c592-3", None, False) is EtagKind.MULTIPART_MD5
    assert etag_kind("5d41402abc4b2a76b9719d911017c592", "aws:kms", False) is EtagKind.OPAQUE
    assert etag_kind("5d41402abc4b2a76b9719d911017c592", "AES256", True) is EtagKind.OPAQUE
    assert etag_kind("W/opaque", None, False) is EtagKind.OPAQUE


def test_a_download_that_breaks_mid_body_is_requested_again(moto: None) -> None:
    source, destination = store("src", "", "a"), store("dst", "", "b")
    source.client.put_object(Bucket="src", Key="k", Body=b"y" * 5000)
    breaks = {"left": 1}
    original_open = source.open_read

    class Broken:
        """A real GET whose body dies on the first read, as a reset connection does."""

        def __init__(self, real: Any) -> None:
            self.real, self.info = real, real.info

        def read(self, size: int) -> bytes:
            raise StoreError(ErrorKind.TRANSIENT, "download interrupted: connection reset by peer")

        def close(self) -> None:
            self.real.close()

    def open_read(key: str, start: int | None, end: int | None, if_match: str | None) -> Any:
        if breaks["left"]:
            breaks["left"] -= 1
            return Broken(original_open(key, start, end, if_match))
        return original_open(key, start, end, if_match)

    source.open_read = open_read  # type: ignore[method-assign]
    result = migrate(source, destination, MigrationOptions(), AbortSignal(), RecordingSink())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert destination.client.get_object(Bucket="dst", Key="k")["Body"].read() == b"y" * 5000


# (address, TCP_NODELAY) of every socket connected while watching; read at connect, when urllib3 has set its options.
_CONNECTED: list[tuple[Any, int]] = []
_WATCHING = threading.Event()


def _record_connect(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _WATCHING.is_set():
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _CONNECTED.append((address, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


@contextlib.contextmanager
def _store_answering_puts() -> Iterator[tuple[S3Store, list[tuple[str, dict[str, str]]]]]:
    """An S3 store on a loopback server that takes every PUT (answering the body's MD5 as its ETag), and the path and
    headers (lower-cased names) of each PUT it took."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, {name.lower(): value for name, value in self.headers.items()}))
            self.send_response(200)
            self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield S3Store(S3Config(bucket="b", endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                               access_key_id="AKIAX", secret_access_key=SECRET, addressing_style="path")), seen
    finally:
        server.shutdown()


def test_whole_object_puts_go_out_without_waiting_for_nagle() -> None:
    """The direct PUT sends headers and body in two writes: with Nagle's algorithm on, a small body waits for the
    server's delayed ACK (about 40 ms per object, measured: 4 KiB objects moved at half the rate)."""
    sys.addaudithook(_record_connect)
    with _store_answering_puts() as (target, _):
        port = int(urllib.parse.urlsplit(target.direct.url("k")).port or 0)
        _WATCHING.set()
        try:
            body = b"x" * 4096
            target.put("k", body, ObjectAttributes(), base64.b64encode(hashlib.md5(body).digest()).decode())
        finally:
            _WATCHING.clear()
    ours = [nodelay for address, nodelay in _CONNECTED if address[1] == port]
    assert ours, "the PUT opened no connection to the server"
    assert all(ours)


def test_bodies_over_plain_http_are_proven_by_their_signed_content_md5_not_a_payload_hash() -> None:
    """A PUT and an UploadPart over plain HTTP: Content-MD5 is among the signed headers (a body other than the one
    hashed is refused by the store, the MinIO tier shows it) and the payload is not hashed again for the signature."""
    with _store_answering_puts() as (target, seen):
        body = b"y" * 5000
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        target.put("dir/k", body, ObjectAttributes(), md5)
        etag = target.upload_part(OpenUpload("b", "dir/k 2", "up/1+x"), 7, body, md5)
    assert etag == hashlib.md5(body).hexdigest()
    (put_path, put_headers), (part_path, part_headers) = seen
    assert put_path == "/b/dir/k"
    part_url = urllib.parse.urlsplit(part_path)
    assert part_url.path == "/b/dir/k%202"
    assert urllib.parse.parse_qs(part_url.query) == {"partNumber": ["7"], "uploadId": ["up/1+x"]}
    for headers in (put_headers, part_headers):
        assert headers["content-md5"] == md5
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        signed = headers["authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        assert {"content-md5", "host", "x-amz-content-sha256", "x-amz-date"} <= set(signed)


def test_answer_timestamps_are_read_as_botocore_reads_them() -> None:
    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    for _ in range(300):
        moment = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=chooser.randrange(2_000_000_000), microseconds=chooser.choice([0, 1000 * chooser.randrange(1000)]))
        forms = [moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
                 moment.strftime("%Y-%m-%dT%H:%M:%SZ"), email.utils.format_datetime(moment, usegmt=True),
                 str(int(moment.timestamp())), moment.replace(tzinfo=None).isoformat()]
        for form in forms:
            assert _parse_timestamp(form) == botocore.utils.parse_timestamp(form), f"seed {seed}: {form}"
