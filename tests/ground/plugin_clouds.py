"""pytest fixtures for the ground's Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server) emulators, and
for Azure signed in with Entra ID (HTTPS Azurite taking OAuth tokens from the ground's stand-in token issuer)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ground.clouds import AzuriteServer, FakeGcsServer, start_azurite, start_fake_gcs
from tests.ground.entra import TokenIssuer, loopback_certificate, start_token_issuer

ContainerFactory = Callable[[], str]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """One Azurite blob service on 127.0.0.1 for the session."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@dataclass
class EntraAzure:
    """Azurite over HTTPS taking OAuth tokens, the token issuer standing in for Entra ID, and the CA both trust."""

    azurite: AzuriteServer
    issuer: TokenIssuer
    ca_file: Path


@pytest.fixture(scope="session")
def entra_azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntraAzure]:
    """One HTTPS Azurite (`--oauth basic`) and one token issuer on 127.0.0.1 for the session, one fresh certificate."""
    base = tmp_path_factory.mktemp("entra-azure")
    cert, key = loopback_certificate(base / "pki")  # its own CA: what clients trust
    with start_token_issuer(cert, key) as issuer, start_azurite(base, tls=(cert, key), ca_file=cert) as server:
        yield EntraAzure(azurite=server, issuer=issuer, ca_file=cert)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """One fake-gcs-server on 127.0.0.1 for the session."""
    with start_fake_gcs(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def azure_container(azurite: AzuriteServer) -> Iterator[ContainerFactory]:
    """make() -> a fresh container on Azurite, deleted after the test (uncommitted blocks go with it)."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        azurite.client().create_container(name)
        made.append(name)
        return name

    yield make
    service = azurite.client()
    for name in made:
        with contextlib.suppress(Exception):
            service.delete_container(name)


@pytest.fixture
def gcs_bucket(fake_gcs: FakeGcsServer) -> Iterator[ContainerFactory]:
    """make() -> a fresh bucket on fake-gcs-server, emptied and deleted after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        fake_gcs.client().create_bucket(name)
        made.append(name)
        return name

    yield make
    client = fake_gcs.client()
    for name in made:
        with contextlib.suppress(Exception):
            client.bucket(name).delete(force=True)
