"""Azurite and fake-gcs-server on 127.0.0.1: the ground's Azure Blob and Google Cloud Storage, as MinIO is its S3.

Both are pinned and installed by tools/build.sh (`azurite`, `fake-gcs-server`). Each server keeps its data in memory
and goes with the test session. Tests reach them through the vendors' own SDKs (`client()`), which is also how they
judge what our backends wrote: an independent read that shares no code with datamover.backends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.ground.binaries import binary
from tests.ground.procs import Proc, free_port, http_check, running, tcp_check

READY_TIMEOUT = 60.0

# Azurite's one built-in account (its documented development account): Azurite accepts no other without
# AZURITE_ACCOUNTS, and a test ground needs no secret of its own.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# fake-gcs-server checks no credentials; the project name is what bucket creation needs.
GCS_PROJECT = "datamover-ground"


@dataclass
class AzuriteServer:
    """One running Azurite blob service: its endpoint (path-style: http://127.0.0.1:<port>/<account>) and account."""

    endpoint: str
    account: str
    key: str = field(repr=False)
    log_path: Path
    proc: Proc | None = field(default=None, repr=False)
    ca_file: Path | None = None  # over HTTPS: the CA that signed its certificate

    def client(self) -> BlobServiceClient:
        """The vendor SDK's client for this server (what tests judge with), signed in with the account key."""
        tls = {"connection_verify": str(self.ca_file)} if self.ca_file else {}
        return BlobServiceClient(self.endpoint, credential={"account_name": self.account, "account_key": self.key},
                                 **tls)


@dataclass
class FakeGcsServer:
    """One running fake-gcs-server (JSON and XML APIs over plain HTTP)."""

    endpoint: str  # http://127.0.0.1:<port>
    log_path: Path
    project: str = GCS_PROJECT
    proc: Proc | None = field(default=None, repr=False)

    def client(self) -> storage.Client:
        """The vendor SDK's client for this server (what tests judge with)."""
        return storage.Client(
            project=self.project, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.endpoint},
        )


@contextlib.contextmanager
def start_azurite(workdir: Path, *, timeout: float = READY_TIMEOUT,
                  tls: tuple[Path, Path] | None = None, ca_file: Path | None = None) -> Iterator[AzuriteServer]:
    """Run Azurite's blob service (in memory, no telemetry) for the duration of the block.

    With `tls` (a certificate and its key): HTTPS, and OAuth bearer tokens accepted besides the account key
    (`--oauth basic`, which Azurite allows only over HTTPS; it checks a token's lifetime, issuer and audience, not
    its signature). Clients must trust the certificate's CA, `ca_file`; for Put Block From URL, which Azurite reads
    from itself, the certificate must be self-signed (Azurite trusts exactly the one it serves).
    """
    port = free_port()
    base = Path(workdir).resolve()
    scheme = "https" if tls else "http"
    server = AzuriteServer(endpoint=f"{scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT}", account=AZURITE_ACCOUNT,
                           key=AZURITE_KEY, log_path=base / "azurite.log")
    argv = [
        str(binary("azurite-blob")), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
        "--disableTelemetry", "--silent", "--skipApiVersionCheck",
    ]
    if tls:
        argv += ["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"]
        server.ca_file = ca_file
    with running("azurite", argv, server.log_path, ready=tcp_check("127.0.0.1", port), timeout=timeout,
                 cwd=base) as proc:
        server.proc = proc
        yield server


@contextlib.contextmanager
def start_fake_gcs(workdir: Path, *, timeout: float = READY_TIMEOUT) -> Iterator[FakeGcsServer]:
    """Run fake-gcs-server (memory backend, plain HTTP) for the duration of the block."""
    port = free_port()
    base = Path(workdir).resolve()
    endpoint = f"http://127.0.0.1:{port}"
    server = FakeGcsServer(endpoint=endpoint, log_path=base / "fake-gcs-server.log")
    argv = [
        str(binary("fake-gcs-server")), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        "-backend", "memory", "-external-url", endpoint, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn",
    ]
    with running("fake-gcs-server", argv, server.log_path, ready=http_check(f"{endpoint}/_internal/healthcheck"),
                 timeout=timeout) as proc:
        server.proc = proc
        yield server
