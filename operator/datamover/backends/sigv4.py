"""AWS Signature Version 4 for the direct S3 path, by hand: botocore's signer was a fifth of a small object's CPU.

botocore's `S3SigV4Auth` is general: per request it copies the headers into a case-insensitive dict several times,
re-parses the URL, sorts and joins through layers of helpers, and derives the signing key with four HMACs. The
direct path (`s3_direct.DirectS3`) signs only a few shapes of request (GET and PUT of a key, with or without a part's
query), so here the host and path prefix are worked out once per bucket and the signing key once per day and secret.
Nothing else differs: `tests/unit/test_sigv4.py` checks every header this signer writes against botocore's signer over
seeded random requests, and against the worked example of the AWS documentation.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from typing import NamedTuple

# The headers botocore leaves out of a signature (hop-by-hop, tracing, the User-Agent): a proxy may change them.
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "traceparent",
    "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
TIMESTAMP = "%Y%m%dT%H%M%SZ"


class Credentials(NamedTuple):
    """What a signature needs of a credential (botocore's frozen credentials have the same three fields)."""

    access_key: str
    secret_key: str
    token: str | None


def host_of(url: str) -> str:
    """The Host header a client sends for `url`: lower case, no user info, the port unless it is the scheme's."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def payload_hash(body: bytes | None, signed_elsewhere: bool) -> str:
    """The X-Amz-Content-SHA256 of a body: unsigned when a signed header (Content-MD5) already pins it."""
    return UNSIGNED_PAYLOAD if body and signed_elsewhere else hashlib.sha256(body or b"").hexdigest()


class Signer:
    """Signs requests to one host in one region for one service, as botocore's `S3SigV4Auth` would sign them."""

    def __init__(self, host: str, region: str, service: str = "s3") -> None:
        self._host = host
        self._scope_tail = f"{region}/{service}/aws4_request"
        self._region = region
        self._service = service
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, day, signing key): one day's key is reused

    def sign(
        self, credentials: Credentials, method: str, path: str, query: str, headers: Mapping[str, str],
        content_sha256: str, now: datetime.datetime | None = None,
    ) -> dict[str, str]:
        """`headers` with X-Amz-Date, X-Amz-Content-SHA256, the session token if any, and Authorization added.

        `path` is the URL path as sent (S3 signs it without normalizing it again) and `query` the URL's query string
        as sent, already percent-encoded.
        """
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime(TIMESTAMP)
        signed = dict(headers)
        signed["X-Amz-Date"] = stamp
        if credentials.token:
            signed["X-Amz-Security-Token"] = credentials.token
        signed["X-Amz-Content-SHA256"] = content_sha256
        canonical = {"host": self._host}
        for name, value in signed.items():
            lower = name.lower()
            if lower not in UNSIGNED_HEADERS:
                canonical[lower] = " ".join(value.split())
        names = sorted(canonical)
        signed_names = ";".join(names)
        # Pairs sort as (name, value), not as "name=value" text: "a-b=1" sorts after "a=1" here, as in botocore.
        pairs = sorted(pair.partition("=")[::2] for pair in query.split("&")) if query else []
        request = "\n".join((
            method, path, "&".join(f"{name}={value}" for name, value in pairs),
            "".join(f"{name}:{canonical[name]}\n" for name in names), signed_names, content_sha256,
        ))
        day = stamp[:8]
        scope = f"{day}/{self._scope_tail}"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256)
        signed["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                                   f"SignedHeaders={signed_names}, Signature={signature.hexdigest()}")
        return signed

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached_secret, cached_day, key = self._key
        if cached_secret != secret or cached_day != day:
            key = f"AWS4{secret}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            # One tuple, replaced whole: threads racing here at midnight each derive a correct key.
            self._key = (secret, day, key)
        return key
