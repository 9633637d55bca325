"""Start, watch and stop the ground's server processes, so a dead or slow server fails loudly with its name and log."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class GroundError(RuntimeError):
    """The test ground could not be built, started or used; the message says which part and why."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago (the caller binds them soon after)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))  # all held open until every port is chosen, so no two are the same
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it soon after)."""
    return free_ports(1)[0]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note saying it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """One running server: its name (the binary's), the process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def failure(self, what: str) -> GroundError:
        """A GroundError naming the binary, saying `what` went wrong and quoting the log's tail."""
        return GroundError(f"{self.name}: {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise self.failure(f"exited with code {code}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Safe to call twice."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=timeout)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the process that started us dies (e.g. pytest is SIGKILLed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_process(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start `argv` with stdout and stderr appended to `log_path`; `env` is added to the current environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(map(str, argv))}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C to pytest must not kill servers before teardown runs
                preexec_fn=_die_with_parent,  # ...but a hard kill of pytest must not leave them behind
            )
        except OSError as exc:
            raise GroundError(f"{name}: could not start {argv[0]}: {exc}") from exc
    return Proc(name=name, popen=popen, log_path=log_path)


def wait_ready(proc: Proc, ready: Callable[[], bool], *, timeout: float, what: str = "ready") -> float:
    """Poll `ready()` until it is true; fail with the log tail if the process exits or `timeout` passes.

    Returns the seconds waited.
    """
    start = time.monotonic()
    delay = 0.05
    while True:
        proc.check_alive()
        if ready():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise proc.failure(f"not {what} after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    log_path: Path,
    *,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Proc]:
    """Run a server for the duration of the block: started, waited for, and stopped even if the block fails."""
    proc = start_process(name, argv, log_path, env=env, cwd=cwd)
    try:
        wait_ready(proc, ready, timeout=timeout)
        yield proc
    finally:
        proc.stop()


def tcp_check(host: str, port: int) -> Callable[[], bool]:
    """A readiness check: something accepts TCP connections on host:port."""

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_check(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    expect_status: int = 200,
    expect_body: str | None = None,
) -> Callable[[], bool]:
    """A readiness check: GET `url` answers `expect_status` (and contains `expect_body` if given)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ssl_context) as resp:
                body = resp.read().decode(errors="replace")
                status: int = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            body = ""
        except (OSError, ssl.SSLError):
            return False
        return status == expect_status and (expect_body is None or expect_body in body)

    return check
