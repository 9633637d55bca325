"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of one S3 server (MinIO), for the failure matrix.

Each request is parsed (request line, headers, body by Content-Length or chunked), matched against the rules in
order, and the first rule that matches and whose seeded coin comes up applies one fault:

- ``reset_request``: forward half of the request body upstream, then reset both connections (TCP RST);
- ``reset_response``: forward the request, send the client the response head and half its body, then reset;
- ``slowdown``: answer 503 SlowDown without forwarding (what S3 does when throttling);
- ``latency``: wait ``delay`` seconds, then forward normally;
- ``blackhole``: read the request and never answer (the connection stays open until the proxy stops);
- ``cut_response``: forward the whole request and read the whole response (so the server did the work, e.g.
  created a multipart upload), then reset the client's connection without sending a byte of it.

Everything else is relayed unchanged. ``Expect: 100-continue`` is answered by the proxy itself. Bounded: one daemon
thread per client connection, all closed by ``stop()`` (the ``fault_proxy`` fixture in test_failure_matrix calls it).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ACTIONS = ("reset_request", "reset_response", "slowdown", "latency", "blackhole", "cut_response")
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")
RECV = 65536
IO_TIMEOUT = 120.0  # a relay that sees nothing for this long gives up (bounds every thread)


class ConnectionGone(Exception):
    """The peer closed or reset its side."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lowercase names

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def is_create_multipart(self) -> bool:
        return self.method == "POST" and "uploads" in self.query.split("&")

    def is_upload_part(self) -> bool:
        return self.method == "PUT" and "uploadId=" in self.query

    def has_body(self) -> bool:
        return int(self.headers.get("content-length", "0") or 0) > 0 or "chunked" in self.headers.get(
            "transfer-encoding", "")


Match = Callable[[Request], bool]


def any_request(_: Request) -> bool:
    return True


@dataclass
class Rule:
    """Apply `action` to matching requests with probability `probability`, at most `limit` times (None: always)."""

    action: str
    match: Match = any_request
    probability: float = 1.0
    limit: int | None = None
    delay: float = 0.0  # seconds, for "latency"
    applied: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault {self.action!r}; one of {ACTIONS}")


class _Reader:
    """Buffered reads from a socket: lines, exact counts, and what is left in the buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(RECV)
        if not data:
            raise ConnectionGone("peer closed")
        self.buffer += data

    def head(self) -> bytes:
        """Everything up to and including the blank line after the headers."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 1 << 20:
                raise ConnectionGone("header too large")
            self._fill()
        end = self.buffer.index(b"\r\n\r\n") + 4
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        return head

    def exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        end = self.buffer.index(b"\r\n") + 2
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def chunked(self) -> bytes:
        """A whole chunked body, framing included, as it came."""
        out = b""
        while True:
            size_line = self.line()
            out += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.line()
                    out += trailer
                    if trailer == b"\r\n":
                        return out
            out += self.exact(size + 2)

    def until_close(self) -> bytes:
        out, self.buffer = self.buffer, b""
        while True:
            try:
                data = self.sock.recv(RECV)
            except OSError:
                return out
            if not data:
                return out
            out += data


def _parse_headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _without_header(head: bytes, name: str) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(name.lower().encode() + b":")]
    return b"\r\n".join(kept)


def _reset(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP RST, as when a connection is cut mid-flight."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class FaultLog:
    """What the proxy did, so a test can show the fault really happened (and a failing trial can say which)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[tuple[str, str, str]] = field(default_factory=list)  # (action, method, target)
    requests: int = 0

    def add(self, action: str, request: Request) -> None:
        with self.lock:
            self.faults.append((action, request.method, request.target))

    def count(self, action: str) -> int:
        with self.lock:
            return sum(1 for fault in self.faults if fault[0] == action)


class FaultProxy:
    """Listens on 127.0.0.1:<free port> and relays to `upstream` ("host", port), applying `rules` (seeded)."""

    def __init__(self, upstream: tuple[str, int], rules: list[Rule] | None = None, seed: int = 0) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = list(rules or [])
        self.random = random.Random(seed)
        self.log = FaultLog()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_rules(self, rules: list[Rule]) -> None:
        with self._lock:
            self.rules = list(rules)

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, reset every open connection and wait (bounded) for the threads."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv (close alone would not)
            _reset(sock)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(IO_TIMEOUT)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _forget(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(self._track(client),), name="faultproxy-conn",
                                      daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _choose(self, request: Request) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.limit is not None and rule.applied >= rule.limit:
                    continue
                if not rule.match(request):
                    continue
                if self.random.random() < rule.probability:
                    rule.applied += 1
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            reader = _Reader(client)
            up_reader: _Reader | None = None
            while not self._stop.is_set():
                head = reader.head()
                request_line, headers = _parse_headers(head)
                method, target = request_line.split(" ")[:2]
                request = Request(method, target, headers)
                with self.log.lock:
                    self.log.requests += 1
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _without_header(head, "expect")
                if "chunked" in headers.get("transfer-encoding", ""):
                    body = reader.chunked()
                else:
                    body = reader.exact(int(headers.get("content-length", "0") or 0))
                rule = self._choose(request)
                action = rule.action if rule else "pass"
                if rule is not None:
                    self.log.add(action, request)
                if action == "slowdown":
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN_BODY)
                                   + SLOWDOWN_BODY)
                    return
                if action == "blackhole":
                    self._stop.wait(IO_TIMEOUT)
                    return
                if action == "latency" and rule is not None:
                    self._stop.wait(rule.delay)
                if upstream is None:
                    upstream = self._track(socket.create_connection(self.upstream, timeout=IO_TIMEOUT))
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                if action == "reset_request":
                    upstream.sendall(head + body[: len(body) // 2])
                    time.sleep(0.01)  # let the partial body reach the server before the reset
                    _reset(upstream)
                    _reset(client)
                    return
                upstream.sendall(head + body)
                response_head = up_reader.head()
                status_line, response_headers = _parse_headers(response_head)
                status = int(status_line.split(" ")[1])
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    response_body = b""
                elif "chunked" in response_headers.get("transfer-encoding", ""):
                    response_body = up_reader.chunked()
                elif "content-length" in response_headers:
                    response_body = up_reader.exact(int(response_headers["content-length"]))
                else:
                    response_body = up_reader.until_close()
                    response_headers["connection"] = "close"
                if action == "cut_response":
                    _reset(client)
                    return
                if action == "reset_response":
                    client.sendall(response_head + response_body[: len(response_body) // 2])
                    time.sleep(0.01)
                    _reset(client)
                    return
                client.sendall(response_head + response_body)
                if response_headers.get("connection", "").lower() == "close" or headers.get(
                        "connection", "").lower() == "close":
                    return
        except (ConnectionGone, OSError, ValueError, IndexError):
            return
        finally:
            self._forget(upstream)
            self._forget(client)


@contextlib.contextmanager
def fault_proxy(endpoint: str, rules: list[Rule] | None = None, seed: int = 0) -> Iterator[FaultProxy]:
    """A running FaultProxy in front of `endpoint` ("http://127.0.0.1:<port>") for the duration of the block."""
    host_port = endpoint.removeprefix("http://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the fault proxy only relays to loopback, not {endpoint}")
    with FaultProxy((host, int(port)), rules, seed) as proxy:
        yield proxy
