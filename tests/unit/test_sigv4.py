"""The hand-written SigV4 signer signs as botocore's does, and as the AWS documentation's worked example says."""

from __future__ import annotations

import datetime
import random
import string
import urllib.parse
from typing import Any
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.credentials

from datamover.backends import sigv4

EXAMPLE_KEY = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class _ReferenceAuth(botocore.auth.S3SigV4Auth):
    """botocore's S3 signer, leaving the payload unsigned when the request's context asks it, over HTTP as over TLS."""

    def _should_sha256_sign_payload(self, request: botocore.awsrequest.AWSRequest) -> bool:
        return bool(request.context.get("payload_signing_enabled", True))


def _botocore_signed(
    credentials: sigv4.Credentials, region: str, method: str, url: str, headers: dict[str, str], body: bytes | None,
    now: datetime.datetime,
) -> dict[str, str]:
    request = botocore.awsrequest.AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    if body and "Content-MD5" in headers:
        request.context["payload_signing_enabled"] = False
    frozen = botocore.credentials.ReadOnlyCredentials(credentials.access_key, credentials.secret_key,
                                                      credentials.token)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now):
        _ReferenceAuth(frozen, "s3", region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


def _ours(
    credentials: sigv4.Credentials, region: str, method: str, url: str, headers: dict[str, str], body: bytes | None,
    now: datetime.datetime,
) -> dict[str, str]:
    parts = urllib.parse.urlsplit(url)
    signer = sigv4.Signer(sigv4.host_of(url), region)
    signed = signer.sign(credentials, method, parts.path, parts.query, headers,
                         sigv4.payload_hash(body, "Content-MD5" in headers), now)
    return {name.lower(): value for name, value in signed.items()}


def _text(chooser: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(chooser.choice(alphabet) for _ in range(chooser.randint(low, high)))


def _random_request(chooser: random.Random) -> tuple[Any, ...]:
    key_alphabet = string.ascii_letters + string.digits + " /+%~!*'()=&?#;:@$,[]_-.é漢\u00a0"
    origin = chooser.choice([
        "http://127.0.0.1:9000", "https://127.0.0.1:443", "http://localhost:80", "https://S3.Example.COM",
        "http://[::1]:9000", "https://bucket.s3.eu-west-3.amazonaws.com", "http://user:pw@minio.local:9000",
    ])
    base = origin + chooser.choice(["/", "/bucket-1/", "/a.b/"])
    key = _text(chooser, key_alphabet, 1, 40)
    url = base + urllib.parse.quote(key, safe="/~")
    if chooser.random() < 0.5:
        query = {"partNumber": str(chooser.randint(1, 10_000)), "uploadId": _text(chooser, key_alphabet, 1, 30)}
        if chooser.random() < 0.3:
            query[_text(chooser, string.ascii_letters + "-_.", 1, 6)] = _text(chooser, key_alphabet, 0, 6)
        url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    method = chooser.choice(["GET", "PUT", "HEAD", "DELETE"])
    body = chooser.choice([None, b"", chooser.randbytes(chooser.randint(1, 300))])
    spaced = string.ascii_letters + "  \t-/;=,"
    headers: dict[str, str] = {}
    for name, value in [
        ("Range", f"bytes={chooser.randint(0, 99)}-{chooser.randint(100, 999)}"),
        ("Content-MD5", _text(chooser, string.ascii_letters + "+/=", 24, 24)),
        ("Content-Type", _text(chooser, spaced, 1, 30)), ("Cache-Control", f"  {_text(chooser, spaced, 0, 20)}  "),
        ("Expires", "Thu, 01 Dec 1994 16:00:00 GMT"), ("If-Match", '"0123abcd"'), ("x-amz-tagging", "a=b&c=d%20e"),
        (f"x-amz-meta-{_text(chooser, string.ascii_letters, 1, 8)}", _text(chooser, spaced, 0, 25)),
        ("User-Agent", "datamover/test"), ("Expect", "100-continue"), ("x-amzn-trace-id", "Root=1"),
    ]:
        if chooser.random() < 0.5:
            headers[name] = value
    credentials = sigv4.Credentials(
        _text(chooser, string.ascii_uppercase + string.digits, 16, 20), _text(chooser, string.printable[:94], 20, 40),
        chooser.choice([None, "", _text(chooser, string.ascii_letters + "/+=", 20, 60)]),
    )
    region = chooser.choice(["us-east-1", "eu-west-3", "ap-southeast-2", "minio"])
    now = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        seconds=chooser.randrange(1_500_000_000))
    return credentials, region, method, url, headers, body, now


def test_every_header_matches_botocore_signer_over_seeded_random_requests() -> None:
    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    for trial in range(2000):
        request = _random_request(chooser)
        assert _ours(*request) == _botocore_signed(*request), f"seed {seed}, trial {trial}: {request}"


def test_one_signer_reused_across_days_and_secrets_signs_each_request_as_botocore_does() -> None:
    # The signing key is cached per day and secret: a rotated secret or a new day must not reuse a stale one.
    signer = sigv4.Signer("127.0.0.1:9000", "us-east-1")
    url = "http://127.0.0.1:9000/bucket/key"
    midnight = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
    for now, secret in [(midnight - datetime.timedelta(seconds=1), "old"), (midnight, "old"), (midnight, "new"),
                        (midnight + datetime.timedelta(days=1), "new"), (midnight, "old")]:
        credentials = sigv4.Credentials("AKID", secret, None)
        signed = signer.sign(credentials, "GET", "/bucket/key", "", {}, sigv4.payload_hash(None, False), now)
        expected = _botocore_signed(credentials, "us-east-1", "GET", url, {}, None, now)
        assert {name.lower(): value for name, value in signed.items()} == expected, (now, secret)


def test_the_aws_documentation_example_get_object_signs_to_its_published_signature() -> None:
    # "Example: GET Object" of the S3 API reference's SigV4 header-based authentication page: the first 10 bytes
    # of examplebucket/test.txt, on 2013-05-24 in us-east-1, with the documentation's example credentials.
    signer = sigv4.Signer(sigv4.host_of("https://examplebucket.s3.amazonaws.com/"), "us-east-1")
    signed = signer.sign(
        sigv4.Credentials(EXAMPLE_KEY, EXAMPLE_SECRET, None), "GET", "/test.txt", "", {"Range": "bytes=0-9"},
        sigv4.payload_hash(None, False), datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC),
    )
    assert signed["X-Amz-Content-SHA256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert signed["X-Amz-Date"] == "20130524T000000Z"
    assert signed["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_a_body_is_left_unsigned_only_when_a_content_md5_pins_it() -> None:
    assert sigv4.payload_hash(b"data", True) == sigv4.UNSIGNED_PAYLOAD
    assert sigv4.payload_hash(b"data", False) == "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
    # An empty body has nothing for an MD5 to pin that a hash of nothing does not pin as well: it stays signed.
    assert sigv4.payload_hash(b"", True) == sigv4.payload_hash(None, True) == sigv4.payload_hash(None, False)
