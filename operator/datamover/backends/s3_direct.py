"""The S3 backend's hot path: GETs, PUTs and part uploads signed and sent without the boto3 client's per-call machinery.

Why not the boto3 client here: per small object, its per-call machinery (parameter validation, serialization, the
endpoint rule set, response parsing into a dict, the event chain) costs about three times the CPU of the request
itself, and on a small-object migration the client's CPU is the bottleneck (bench/hot_path.py prints the figures;
docs/performance.md keeps them). What is kept from botocore is what is hard to get right: credentials with their
refresh, TLS verification, proxies and the connection pool (`URLLib3Session`), and the request URL, which the client
itself resolves once (S3Store asks it for a probe key). The SigV4 signature is `sigv4.Signer`'s, checked against
botocore's signer header for header. Each attempt is announced through the client's own `before-send` event, so the
liveness hooks, moto and the tests' fault injection see these requests exactly as they see the client's. Parts go
this way too: a part is bytes per request like a whole object, and the client would sign a SHA-256 of each over plain
HTTP. Everything else of the backend (listing, HEAD, creating, completing and aborting uploads, copies) stays on the
boto3 client: those requests are few per byte.

Retries follow botocore's standard mode (transient codes and connection errors, jittered exponential backoff,
`max_attempts` in total); what is left after them is raised as the client would raise it (`ClientError` or a
botocore connection error), so `S3Store` classifies both paths with one table.
"""

from __future__ import annotations

import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import botocore.hooks
import botocore.httpsession
import botocore.utils

from datamover.backends import sigv4

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# What botocore's standard retry mode retries besides connection errors: throttling and transient server errors.
RETRIED_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout",
    "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "PriorRequestNotComplete",
})
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRIED_ERRORS = (
    botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
)
MAX_BACKOFF = 20.0  # seconds, as botocore's standard mode
PROBE_KEY = "datamover-probe"  # the key whose URL tells the bucket's (S3Store)

_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class DirectS3:
    """Signed GET and PUT of whole objects, byte ranges and parts in one bucket, on the URL the client resolves."""

    def __init__(
        self, client: S3Client, credentials: botocore.credentials.Credentials | None, base_url: str,
        max_attempts: int, timeout: tuple[float, float], verify: bool, max_pool_connections: int,
        attempt_ended: Callable[[bool], None],
    ) -> None:
        self._events = client.meta.events
        self._credentials = credentials
        self._region = client.meta.region_name or "us-east-1"
        self._max_attempts = max_attempts
        self._attempt_ended = attempt_ended
        self._base = base_url  # the bucket's URL, ending in "/", as the client resolves it
        self._signer = sigv4.Signer(sigv4.host_of(base_url), self._region)
        self._origin_length = len(base_url) - len(urllib.parse.urlsplit(base_url).path)  # scheme://host:port
        self._session = botocore.httpsession.URLLib3Session(
            # (connect, read), as botocore's own endpoint passes it; the stubs only know a single number.
            verify=verify, proxies=botocore.utils.get_environ_proxies(self._base), timeout=timeout,  # type: ignore[arg-type]
            max_pool_connections=max_pool_connections,
            # As botocore's client sets it: the request's headers and body go out in two writes, and with Nagle's
            # algorithm on, the body waits for the server's delayed ACK of the headers (about 40 ms per small PUT).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],  # type: ignore[list-item]  # stubs say str
        )

    def url(self, key: str, query: Mapping[str, str] | None = None) -> str:
        # As botocore quotes a key in the path: everything but unreserved characters and "/".
        url = self._base + urllib.parse.quote(key, safe="/~")
        return f"{url}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}" if query else url

    def send(self, operation: str, method: str, key: str, headers: Mapping[str, str], body: bytes | None,
             stream: bool, query: Mapping[str, str] | None = None) -> botocore.awsrequest.AWSResponse:
        """One request with botocore's standard retries; a 2xx response, or the error the client would raise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._attempt(operation, method, self.url(key, query), headers, body, stream)
            except RETRIED_ERRORS:
                if attempt >= self._max_attempts:
                    raise
                self._backoff(attempt)
                continue
            if response.status_code < 300:
                return response
            error = self._client_error(operation, response)
            code = error.response["Error"]["Code"]
            if attempt >= self._max_attempts or (
                    response.status_code not in RETRIED_STATUSES and code not in RETRIED_CODES):
                raise error
            self._backoff(attempt)

    def _attempt(self, operation: str, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                 stream: bool) -> botocore.awsrequest.AWSResponse:
        if self._credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise botocore.exceptions.NoCredentialsError()
        path, _, query = url[self._origin_length:].partition("?")
        # A body with a Content-MD5 goes with an unsigned payload: the store checks the body against the MD5, which is
        # signed, so a signed SHA-256 of the payload as well would cost CPU and prove nothing more (what the AWS SDKs
        # do over TLS; here over plain HTTP too, where botocore would sign the payload: 0.7 s of CPU per GiB).
        signed = self._signer.sign(
            sigv4.Credentials(frozen.access_key, frozen.secret_key, frozen.token), method, path, query, headers,
            sigv4.payload_hash(body, "Content-MD5" in headers),
        )
        prepared = botocore.awsrequest.AWSRequest(method=method, url=url, headers=signed, data=body,
                                                  stream_output=stream).prepare()
        answered = False
        try:
            # The client's own hook point: liveness (and its interrupt), moto and tests' fault injection answer here.
            responses = self._events.emit(f"before-send.s3.{operation}", request=prepared)
            response = botocore.hooks.first_non_none_response(responses)
            if response is None:
                response = self._session.send(prepared)
            answered = True
            return response  # type: ignore[no-any-return]
        finally:
            self._attempt_ended(answered)

    @staticmethod
    def _client_error(operation: str, response: botocore.awsrequest.AWSResponse) -> botocore.exceptions.ClientError:
        body = response.content or b""
        code_match, message_match = _CODE.search(body), _MESSAGE.search(body)
        # HEAD-like answers carry no body: the status is the code, as botocore reports it.
        code = code_match.group(1).decode("utf-8", "replace") if code_match else str(response.status_code)
        message = message_match.group(1).decode("utf-8", "replace") if message_match else ""
        parsed: Any = {"Error": {"Code": code, "Message": message},
                       "ResponseMetadata": {"HTTPStatusCode": response.status_code}}
        return botocore.exceptions.ClientError(parsed, operation)

    @staticmethod
    def _backoff(attempt: int) -> None:
        time.sleep(min(MAX_BACKOFF, random.random() * 2 ** (attempt - 1)))
