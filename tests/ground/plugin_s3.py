"""pytest fixtures for the S3 part of the test ground: two MinIO "clouds" with different credentials.

These listen on loopback (the engine's tests); the control-plane tier has its own pair where its pods reach them.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.ground.s3 import S3Server, empty_and_delete_bucket, start_minio

_startup: dict[str, float] = {}

BucketFactory = Callable[[S3Server], str]


def cloud_server(tmp_path_factory: pytest.TempPathFactory, name: str, *, host: str = "127.0.0.1",
                 ) -> Iterator[S3Server]:
    """One MinIO server listening on `host`, with random credentials, for as long as the fixture lives."""
    start = time.monotonic()
    with start_minio(
        tmp_path_factory.mktemp(name), name, access_key=f"{name}-admin", secret_key=secrets.token_hex(16),
        host=host,
    ) as server:
        _startup[name] = time.monotonic() - start
        yield server


@pytest.fixture(scope="session")
def cloud_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The first MinIO server (credentials cloud-a-admin / random)."""
    yield from cloud_server(tmp_path_factory, "cloud-a")


@pytest.fixture(scope="session")
def cloud_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The second MinIO server, with credentials different from cloud_a's."""
    yield from cloud_server(tmp_path_factory, "cloud-b")


@pytest.fixture
def bucket_factory() -> Iterator[BucketFactory]:
    """make_bucket(server) -> a fresh, uniquely named bucket on `server`, emptied and deleted after the test."""
    made: list[tuple[S3Server, str]] = []

    def make_bucket(server: S3Server) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        server.client().create_bucket(Bucket=name)
        made.append((server, name))
        return name

    yield make_bucket
    for server, name in reversed(made):
        empty_and_delete_bucket(server, name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup:
        parts = ", ".join(f"{name} {secs:.1f}s" for name, secs in _startup.items())
        terminalreporter.write_line(f"ground: MinIO up ({parts})")
