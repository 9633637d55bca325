"""A stand-in Kubernetes API server on loopback, so unit tests drive the real client (datamover.kubeapi) over HTTP.

A test gives it a function from the request to the answer; it records every request. An answer is a status, a body
(a dict as JSON) and, for a watch, a list of events sent as the API server sends them (one JSON line each, the
connection closed after the last, as when timeoutSeconds runs out). `tls()` serves HTTPS and may require a client
certificate, for the kubeconfig tests.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pykube

from datamover import kubeapi


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    client_subject: str = ""  # the client certificate's common name, over TLS with one


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)
    events: list[dict[str, Any]] | None = None  # a watch's events, one line each


def status(code: int, reason: str, message: str) -> Answer:
    """A Status answer, as the API server refuses a request."""
    return Answer(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                         "reason": reason, "code": code})


Respond = Callable[[Request], Answer]


class FakeApiServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.url = ""

    def matching(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            subject = ""
            peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            for rdn in (peer or {}).get("subject", ()):
                for attribute in rdn:  # ((name, value), ...) per relative distinguished name
                    if attribute[0] == "commonName":
                        subject = str(attribute[1])
            request = Request(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                              {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None,
                              subject)
            server.requests.append(request)
            answer = server.respond(request)
            if answer.events is not None:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in answer.events:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True
                return
            data = json.dumps(answer.body).encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    return Handler


@contextmanager
def serve(respond: Respond, context: ssl.SSLContext | None = None) -> Iterator[FakeApiServer]:
    fake = FakeApiServer(respond)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.daemon_threads = True
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    fake.url = f"{'https' if context else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


def kubeconfig(server: str, **user: Any) -> dict[str, Any]:
    """A one-context kubeconfig for `server` (plain HTTP needs no CA), with `user`'s fields."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "team-a"}}]}


def client_of(server: FakeApiServer) -> kubeapi.Client:
    """The real client, configured for the stand-in server with a token."""
    return kubeapi.Client(pykube.KubeConfig(kubeconfig(server.url, token="t")))
