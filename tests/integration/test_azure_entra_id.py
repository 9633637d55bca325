"""Azure Blob signed in with Entra ID: a service principal's client secret, or Workload Identity's federated token.

Against Azurite over HTTPS taking OAuth tokens (`--oauth basic`) and the ground's stand-in for Entra ID's token
endpoint (tests/ground/entra.py). Stores are built as the worker builds them: the Secret's keys travel as the Job's
environment variables (`credential_env`), through `worker.main._credentials` and `locations.store_config`. Judged by
reading with the vendor SDK signed in with the account key (never through the backend under test), and by the token
issuer's record of the token requests it answered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from datamover.api import Location, credential_env
from datamover.backends import open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.base import ObjectStore
from datamover.engine import AbortSignal, MigrationOptions, MigrationResult, Outcome, migrate
from datamover.locations import store_config
from datamover.worker.main import _credentials, failure_reason
from tests.ground.plugin_clouds import EntraAzure
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server
from tests.integration.test_engine_clouds import OPTIONS, Side, _azure, _s3, fill, judge
from tests.store_conformance import StoreConformance, StoreFactory
from tests.unit import RecordingSink

WORKLOAD_IDENTITY_VARIABLES = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE",
                               "AZURE_AUTHORITY_HOST")


@pytest.fixture(autouse=True)
def trusted_ground_ca(entra_azure: EntraAzure, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker trusts the ground's CA as a pod trusts a private CA: through the bundle requests reads (both the
    storage and the token requests go through azure-core's requests transport)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra_azure.ca_file))
    for name in WORKLOAD_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def container(entra_azure: EntraAzure) -> Iterator[Callable[[], str]]:
    """make() -> a fresh container on the HTTPS Azurite, deleted after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{os.urandom(8).hex()}"
        entra_azure.azurite.client().create_container(name)
        made.append(name)
        return name

    yield make
    for name in made:
        entra_azure.azurite.client().delete_container(name)


def service_principal(entra: EntraAzure, **overrides: str) -> dict[str, str]:
    """A service principal's Secret keys, as a user writes them."""
    issuer = entra.issuer
    return {"tenantId": issuer.tenant_id, "clientId": issuer.client_id, "clientSecret": issuer.client_secret,
            "authorityHost": issuer.authority_host, **overrides}


def azure_store(entra: EntraAzure, container: str, prefix: str, secret: dict[str, str] | None,
                side: str = "destination") -> ObjectStore:
    """The store a worker opens for this location; `secret` None means no credentialsSecretRef."""
    raw = {"type": "azureBlob", "bucket": container, "prefix": prefix, "endpoint": entra.azurite.endpoint,
           "azureBlob": {"accountName": entra.azurite.account}}
    if secret is not None:
        raw["credentialsSecretRef"] = {"name": "azure-entra"}
    location = Location.from_spec(raw, side)
    env = {credential_env(side, key): value for key, value in (secret or {}).items()}
    return open_store(store_config(location, _credentials(side, location, env)))


def vendor_side(entra: EntraAzure, container: str, prefix: str) -> Side:
    """The container as the vendor SDK sees it with the account key: the judge."""
    return _azure(entra.azurite, container, prefix)


def run(source: ObjectStore, destination: ObjectStore, **options: object) -> MigrationResult:
    return migrate(source, destination, MigrationOptions(**{**OPTIONS, **options}),
                   AbortSignal(), RecordingSink())


def test_s3_to_azure_with_a_service_principal_is_exact(
    entra_azure: EntraAzure, container: Callable[[], str], cloud_a: S3Server, bucket_factory: BucketFactory,
) -> None:
    source = _s3(cloud_a, bucket_factory(cloud_a), "in/")
    originals = fill(source)  # small objects and one in parts (uncommitted blocks, then Put Block List)
    name = container()
    before = len(entra_azure.issuer.requests)

    result = run(source.store(), azure_store(entra_azure, name, "out/", service_principal(entra_azure)))

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert judge(source, vendor_side(entra_azure, name, "out/"), originals, remain_source=True) == {
        "untouched": 0, "migrated": len(originals)}
    # One token for the whole job, kept and reused by the credential.
    assert entra_azure.issuer.requests[before:] == ["secret:ok"]


def test_azure_signed_in_with_a_service_principal_copies_to_azure_server_side(
    entra_azure: EntraAzure, container: Callable[[], str], caplog: pytest.LogCaptureFixture,
) -> None:
    """The source has no key to sign a SAS with: it asks for a user delegation key and signs the copy's SAS with it;
    the destination's service reads the source by that URL (no byte passes through the worker)."""
    source_name, destination_name = container(), container()
    source = vendor_side(entra_azure, source_name, "in/")
    originals = fill(source)
    source_store = azure_store(entra_azure, source_name, "in/", service_principal(entra_azure), side="source")
    with caplog.at_level("INFO", logger="datamover.engine"):
        result = run(source_store, azure_store(entra_azure, destination_name, "out/", service_principal(entra_azure)),
                     remain_source=False)
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert any("server_side_copy=True" in message for message in caplog.messages), caplog.messages
    assert judge(source, vendor_side(entra_azure, destination_name, "out/"), originals, remain_source=False) == {
        "untouched": 0, "migrated": len(originals)}


def test_a_wrong_client_secret_fails_once_saying_which_secret_and_writes_nothing(
    entra_azure: EntraAzure, container: Callable[[], str], cloud_a: S3Server, bucket_factory: BucketFactory,
) -> None:
    source = _s3(cloud_a, bucket_factory(cloud_a), "in/")
    fill(source, big=0)
    name = container()
    wrong = "not-the-client-secret-" + os.urandom(6).hex()
    before = len(entra_azure.issuer.requests)

    result = run(source.store(), azure_store(entra_azure, name, "", service_principal(entra_azure,
                                                                                      clientSecret=wrong)))

    assert result.outcome is Outcome.FAILED and result.fatal_kind == "permanent", result
    assert failure_reason(result) == "CredentialsRejected"
    error = result.error or ""
    assert "AADSTS7000215" in error and "Secret 'azure-entra'" in error, error
    assert entra_azure.issuer.client_id in error and name in error, "names the principal and the container"
    assert wrong not in error and entra_azure.issuer.client_secret not in error
    assert vendor_side(entra_azure, name, "").contents() == {}, "nothing was written"
    # Asked once and stopped: no retries of a refused token, no back-off.
    assert entra_azure.issuer.requests[before:] == ["secret:invalid_client"]


def test_workload_identity_signs_in_with_the_pods_federated_token(
    entra_azure: EntraAzure, container: Callable[[], str], cloud_a: S3Server, bucket_factory: BucketFactory,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """No credentialsSecretRef: the variables the Azure Workload Identity webhook injects, and its token file."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(entra_azure.issuer.federated_token)
    monkeypatch.setenv("AZURE_TENANT_ID", entra_azure.issuer.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", entra_azure.issuer.client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra_azure.issuer.authority_host + "/")
    source = _s3(cloud_a, bucket_factory(cloud_a), "in/")
    originals = fill(source, big=0)
    name = container()
    before = len(entra_azure.issuer.requests)

    result = run(source.store(), azure_store(entra_azure, name, "out/", None))

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert judge(source, vendor_side(entra_azure, name, "out/"), originals, remain_source=True)["migrated"] == len(
        originals)
    assert entra_azure.issuer.requests[before:] == ["assertion:ok"]

    # A token the tenant does not trust (another cluster's, say) is refused once, saying so.
    token_file.write_text("a-token-from-another-cluster")
    failed = run(source.store(), azure_store(entra_azure, container(), "", None))
    assert failed.outcome is Outcome.FAILED and failure_reason(failed) == "CredentialsRejected", failed
    assert "AADSTS700213" in (failed.error or "") and "workload identity" in (failed.error or "")
    assert entra_azure.issuer.requests[before + 1:] == ["assertion:invalid_client"]


def test_no_secret_and_no_workload_identity_fails_saying_what_is_missing(
    entra_azure: EntraAzure, container: Callable[[], str], cloud_a: S3Server, bucket_factory: BucketFactory,
) -> None:
    source = _s3(cloud_a, bucket_factory(cloud_a), "in/")
    fill(source, big=0)
    name = container()

    result = run(source.store(), azure_store(entra_azure, name, "", None))

    assert result.outcome is Outcome.FAILED and result.fatal_kind == "permanent", result
    assert failure_reason(result) == "CredentialsRejected"
    assert "AZURE_FEDERATED_TOKEN_FILE" in (result.error or "") and name in (result.error or "")
    assert vendor_side(entra_azure, name, "").contents() == {}


class TestAzureBlobSignedInWithAServicePrincipal(StoreConformance):
    """The whole store conformance suite, every request carrying an Entra ID bearer token instead of Shared Key."""

    @pytest.fixture
    def make_store(self, entra_azure: EntraAzure, container: Callable[[], str]) -> StoreFactory:
        def make(page_size: int = 1000) -> ObjectStore:
            return open_store(AzureBlobConfig(
                container=container(), account_url=entra_azure.azurite.endpoint, prefix="pre/",
                account_name=entra_azure.azurite.account, list_page_size=page_size,
                **{key: value for key, value in zip(
                    ("tenant_id", "client_id", "client_secret", "authority_host"),
                    service_principal(entra_azure).values(), strict=True)},
            ))

        return make
