"""Locations of every store type: the spec union parsed, its Secret's keys, and the backend config a worker builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from datamover.api import MigrationSpec, SpecError, StoreType
from datamover.backends import open_store
from datamover.backends.azure_blob import AzureBlobConfig, AzureBlobStore
from datamover.backends.base import ErrorKind, StoreError
from datamover.backends.gcs import GcsConfig
from datamover.backends.s3 import S3Config
from datamover.controller import resources
from datamover.locations import store_config

AZURE = {"type": "azureBlob", "bucket": "photos", "prefix": "2024/", "azureBlob": {"accountName": "acme"},
         "credentialsSecretRef": {"name": "azure"}}
GCS = {"type": "gcs", "bucket": "photos-archive", "gcs": {"project": "acme-prod"},
       "credentialsSecretRef": {"name": "gcs"}}
S3 = {"bucket": "a", "endpoint": "https://s3.example", "region": "eu-west-1", "credentialsSecretRef": {"name": "s3"}}
KEY_FILE = json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "k", "client_email": "a@p",
                       "client_id": "1", "token_uri": "https://oauth2.example/token", "private_key": "unused"})


def spec(source: dict[str, Any], destination: dict[str, Any]) -> MigrationSpec:
    return MigrationSpec.from_spec({"source": source, "destination": destination})


def test_an_s3_spec_written_before_the_union_keeps_its_meaning() -> None:
    parsed = spec(S3, {"bucket": "b"})
    assert parsed.source.type is StoreType.S3 and parsed.destination.type is StoreType.S3
    config = store_config(parsed.source, {"accessKeyId": "id", "secretAccessKey": "secret"})
    assert isinstance(config, S3Config)
    assert (config.endpoint, config.region, config.access_key_id) == ("https://s3.example", "eu-west-1", "id")


def test_azure_and_gcs_locations_become_their_backends_configs() -> None:
    parsed = spec(AZURE, GCS)
    azure = store_config(parsed.source, {"accountKey": "a2V5"}, max_pool_connections=40, stall_timeout=20)
    assert isinstance(azure, AzureBlobConfig)
    assert (azure.account_url, azure.container, azure.prefix) == ("https://acme.blob.core.windows.net", "photos",
                                                                  "2024/")
    assert (azure.account_name, azure.account_key, azure.max_pool_connections, azure.stall_timeout) == (
        "acme", "a2V5", 40, 20)
    assert "a2V5" not in repr(azure)
    gcs = store_config(parsed.destination, {"serviceAccountJson": KEY_FILE})
    assert isinstance(gcs, GcsConfig) and gcs.project == "acme-prod" and gcs.bucket == "photos-archive"
    assert "private_key" not in repr(gcs)
    assert isinstance(open_store(azure), AzureBlobStore)
    sas = store_config(parsed.source, {"sasToken": "?sv=2024&sig=x"})
    assert isinstance(sas, AzureBlobConfig) and sas.sas_token and sas.account_key is None


def test_an_emulator_endpoint_replaces_the_vendors_own() -> None:
    parsed = spec({**AZURE, "endpoint": "http://127.0.0.1:10000/acme"}, {**GCS, "endpoint": "http://127.0.0.1:4443"})
    azure = store_config(parsed.source, {"accountKey": "a2V5"})
    gcs = store_config(parsed.destination, {})
    assert isinstance(azure, AzureBlobConfig) and azure.account_url == "http://127.0.0.1:10000/acme"
    assert isinstance(gcs, GcsConfig) and gcs.endpoint == "http://127.0.0.1:4443" and gcs.service_account_json is None
    assert "127.0.0.1:4443" in parsed.destination.describe()


def test_a_gcs_key_that_is_not_a_service_account_key_is_refused_without_echoing_it() -> None:
    parsed = spec(S3, GCS)
    with pytest.raises(ValueError, match="service_account") as raised:
        store_config(parsed.destination, {"serviceAccountJson": json.dumps({"type": "authorized_user", "x": "s3cr"})})
    assert "s3cr" not in str(raised.value)


@pytest.mark.parametrize(("location", "message"), [
    ({**AZURE, "azureBlob": {}}, r"spec\.source\.azureBlob\.accountName is required"),
    ({**S3, "type": "swift"}, r"spec\.source\.type must be one of s3, azureBlob, gcs"),
])
def test_an_incomplete_location_is_refused_naming_the_field(location: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(location, {"bucket": "b"})


def test_workers_get_the_secret_keys_of_their_location_type() -> None:
    parsed = spec(AZURE, GCS)
    job = resources.job({"metadata": {"name": "j", "namespace": "n", "uid": "u"}}, parsed,
                        resources.WorkerSettings(image="example/dm:1"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {
        "DATAMOVER_SOURCE_ACCOUNT_KEY": {"name": "azure", "key": "accountKey", "optional": True},
        "DATAMOVER_SOURCE_SAS_TOKEN": {"name": "azure", "key": "sasToken", "optional": True},
        "DATAMOVER_SOURCE_CLIENT_SECRET": {"name": "azure", "key": "clientSecret", "optional": True},
        "DATAMOVER_SOURCE_TENANT_ID": {"name": "azure", "key": "tenantId", "optional": True},
        "DATAMOVER_SOURCE_CLIENT_ID": {"name": "azure", "key": "clientId", "optional": True},
        "DATAMOVER_SOURCE_AUTHORITY_HOST": {"name": "azure", "key": "authorityHost", "optional": True},
        "DATAMOVER_DESTINATION_SERVICE_ACCOUNT_JSON": {"name": "gcs", "key": "serviceAccountJson", "optional": False},
    }



def test_gcs_without_a_key_or_a_pod_identity_fails_as_configuration_not_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # No key file, no gcloud configuration, and no probe of a metadata server (this machine has none to ask).
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    store = open_store(store_config(spec(S3, {"type": "gcs", "bucket": "photos"}).destination, {}))
    with pytest.raises(StoreError) as raised:
        store.check_access()
    assert raised.value.kind is ErrorKind.PERMANENT and raised.value.code == "Credentials"
    assert "serviceAccountJson" in raised.value.message and "photos" in raised.value.message


def test_a_destination_storage_class_and_encryption_reach_the_s3_config() -> None:
    parsed = spec(S3, {"bucket": "b", "storageClass": "STANDARD_IA",
                       "serverSideEncryption": {"type": "SSE-KMS", "kmsKeyId": "alias/migrations"}})
    assert parsed.destination.storage_class == "STANDARD_IA"
    config = store_config(parsed.destination, {})
    assert isinstance(config, S3Config)
    assert (config.server_side_encryption, config.kms_key_id) == ("aws:kms", "alias/migrations")
    sse_s3 = store_config(spec(S3, {"bucket": "b", "serverSideEncryption": {"type": "SSE-S3"}}).destination, {})
    assert isinstance(sse_s3, S3Config) and (sse_s3.server_side_encryption, sse_s3.kms_key_id) == ("AES256", None)


@pytest.mark.parametrize(("source", "destination", "message"), [
    ({**S3, "storageClass": "GLACIER"}, {"bucket": "b"}, r"spec\.source: storageClass and serverSideEncryption are "
                                                          r"destination fields"),
    (S3, {"bucket": "b", "serverSideEncryption": {"type": "AES"}}, r"serverSideEncryption\.type must be one of"),
    (S3, {"bucket": "b", "serverSideEncryption": {"type": "SSE-S3", "kmsKeyId": "k"}}, r"kmsKeyId goes with type "
                                                                                       r"SSE-KMS only"),
    (S3, {**GCS, "storageClass": "NEARLINE"}, r"spec\.destination: storageClass and serverSideEncryption are S3"),
])
def test_fidelity_fields_in_the_wrong_place_are_refused_naming_them(
    source: dict[str, Any], destination: dict[str, Any], message: str,
) -> None:
    with pytest.raises(SpecError, match=message):
        spec(source, destination)


def test_an_s3_worker_does_not_load_the_azure_and_google_sdks() -> None:
    # They cost each worker pod about 20 MiB and 0.3 s of start-up; only a job with such a location needs them.
    probe = ("import sys, datamover.worker.main, datamover.locations as l, datamover.api as a\n"
             "l.store_config(a.Location(bucket='b'), {})\n"
             "print(sorted(m for m in ('azure.storage.blob', 'google.cloud.storage') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_an_azure_worker_with_a_key_does_not_load_azure_identity() -> None:
    # azure-identity brings MSAL and PyJWT: only a location signed in with Entra ID needs them.
    probe = ("import sys, datamover.locations as l, datamover.api as a, datamover.backends as b\n"
             "loc = a.Location(bucket='photos', type=a.StoreType.AZURE_BLOB, account_name='acme', secret_name='k')\n"
             "b.open_store(l.store_config(loc, {'accountKey': 'a2V5'}))\n"
             "print(sorted(m for m in ('azure.storage.blob', 'azure.identity', 'msal') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['azure.storage.blob']"


def test_an_azure_service_principal_reaches_the_store_config_and_stays_out_of_repr() -> None:
    parsed = spec(AZURE, {"bucket": "b"})
    config = store_config(parsed.source, {"tenantId": "t-1", "clientId": "c-1", "clientSecret": "s3cr3t-value",
                                          "authorityHost": "https://login.chinacloudapi.cn"})
    assert isinstance(config, AzureBlobConfig)
    assert (config.tenant_id, config.client_id, config.client_secret, config.authority_host) == (
        "t-1", "c-1", "s3cr3t-value", "https://login.chinacloudapi.cn")
    assert config.uses_entra_id and not config.workload_identity and config.credentials_name == "azure"
    assert "s3cr3t-value" not in repr(config)


def test_an_azure_location_without_a_secret_uses_the_pods_workload_identity() -> None:
    parsed = spec({k: v for k, v in AZURE.items() if k != "credentialsSecretRef"}, {"bucket": "b"})
    config = store_config(parsed.source, {})
    assert isinstance(config, AzureBlobConfig)
    assert config.workload_identity and config.uses_entra_id and config.credentials_name is None


def test_a_client_secret_without_its_tenant_or_client_is_refused() -> None:
    wanted = spec(AZURE, {"bucket": "b"}).source.secret_keys
    assert wanted.missing_companion({"clientSecret": "x", "clientId": "c"}) == ("tenantId", "clientSecret")
    assert wanted.missing_companion({"clientSecret": "x", "tenantId": "t"}) == ("clientId", "clientSecret")
    assert wanted.missing_companion({"clientSecret": "x", "tenantId": "t", "clientId": "c"}) is None
    assert wanted.missing_companion({"accountKey": "k"}) is None
    with pytest.raises(ValueError, match="tenantId and clientId"):
        store_config(spec(AZURE, {"bucket": "b"}).source, {"clientSecret": "x", "clientId": "c"})
