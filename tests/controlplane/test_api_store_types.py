"""The API server itself accepts and refuses MigrationJob locations of every store type (the CRD's schema and CEL)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ground.plugin_controlplane import Kubectl

pytestmark = pytest.mark.ground

CRD = Path(__file__).resolve().parents[2] / "crds" / "datamover.io_migrationjobs.yaml"
S3 = {"bucket": "photos", "endpoint": "https://s3.example", "credentialsSecretRef": {"name": "aws"}}
AZURE = {"type": "azureBlob", "bucket": "photos", "azureBlob": {"accountName": "acmephotos"},
         "credentialsSecretRef": {"name": "azure"}}
GCS = {"type": "gcs", "bucket": "acme-archive", "gcs": {"project": "acme-prod"}}

VALID: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "s3-to-azure": (S3, AZURE),
    "azure-to-gcs": (AZURE, GCS),
    "azure-workload-identity": ({k: v for k, v in AZURE.items() if k != "credentialsSecretRef"}, S3),
    "gcs-to-s3": (GCS, {"bucket": "b", "addressingStyle": "path", "region": "eu-west-1"}),
    "plain-s3-as-before": ({"bucket": "a"}, {"bucket": "b", "insecureSkipTLSVerify": True}),
    "s3-class-and-encryption": ({"bucket": "a"}, {
        "bucket": "b", "storageClass": "STANDARD_IA",
        "serverSideEncryption": {"type": "SSE-KMS", "kmsKeyId": "alias/mig"},
    }),
}
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "azure-without-member": ({k: v for k, v in AZURE.items() if k != "azureBlob"},
                             "azureBlob (with accountName) is set exactly when type is azureBlob"),
    "azure-member-on-s3": ({**S3, "azureBlob": {"accountName": "acme"}},
                           "azureBlob (with accountName) is set exactly when type is azureBlob"),
    "gcs-member-on-azure": ({**AZURE, "gcs": {}}, "gcs is set only when type is gcs"),
    "region-on-gcs": ({**GCS, "region": "eu"}, "are S3 fields (type s3) only"),
    "path-style-on-azure": ({**AZURE, "addressingStyle": "path"}, "are S3 fields (type s3) only"),
    "azure-container-name": ({**AZURE, "bucket": "Photos_2024"}, "an Azure container name is 3-63 lowercase"),
    "azure-container-too-short": ({**AZURE, "bucket": "ab"}, "an Azure container name is 3-63 lowercase"),
    "azure-account-name": ({**AZURE, "azureBlob": {"accountName": "Acme-Photos"}}, "spec.source.azureBlob.accountName"),
    "unknown-type": ({**S3, "type": "swift"}, 'spec.source.type: Unsupported value: "swift"'),
    "storage-class-on-source": ({**S3, "storageClass": "GLACIER"},
                                "storageClass and serverSideEncryption are destination fields"),
}
# Destinations refused (the source being a plain S3 bucket).
INVALID_DESTINATION: dict[str, tuple[dict[str, Any], str]] = {
    "kms-key-with-sse-s3": ({"bucket": "b", "serverSideEncryption": {"type": "SSE-S3", "kmsKeyId": "k"}},
                            "kmsKeyId goes with type SSE-KMS only"),
    "unknown-encryption": ({"bucket": "b", "serverSideEncryption": {"type": "AES"}},
                           'spec.destination.serverSideEncryption.type: Unsupported value: "AES"'),
    "storage-class-on-azure": ({**AZURE, "storageClass": "COOL"},
                               "storageClass and serverSideEncryption are S3 fields (type s3) only"),
    "lowercase-storage-class": ({"bucket": "b", "storageClass": "glacier"}, "spec.destination.storageClass"),
}


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/migrationjobs.datamover.io", "--timeout=60s")


def dry_run(kubectl: Kubectl, name: str, source: dict[str, Any], destination: dict[str, Any]) -> Any:
    job = {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"source": copy.deepcopy(source), "destination": copy.deepcopy(destination)}}
    return kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-", input=yaml.safe_dump(job), check=False)


@pytest.mark.parametrize("case", sorted(VALID))
def test_locations_of_every_type_are_accepted(kubectl: Kubectl, crd: None, case: str) -> None:
    source, destination = VALID[case]
    result = dry_run(kubectl, f"ok-{case}", source, destination)
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(result.stdout)["spec"]
    assert stored["source"]["type"] == source.get("type", "s3"), "type defaults to s3: old specs keep their meaning"


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_mismatched_location_is_refused_with_a_readable_message(kubectl: Kubectl, crd: None, case: str) -> None:
    source, message = INVALID[case]
    result = dry_run(kubectl, f"bad-{case}", source, {"bucket": "b"})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("case", sorted(INVALID_DESTINATION))
def test_a_bad_destination_is_refused_with_a_readable_message(kubectl: Kubectl, crd: None, case: str) -> None:
    destination, message = INVALID_DESTINATION[case]
    result = dry_run(kubectl, f"bad-{case}", {"bucket": "a"}, destination)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(("mode", "complaint"), [
    ("dry-run", 'spec.mode: Unsupported value: "dry-run": supported values: "run", "plan"'),
    ("Plan", 'spec.mode: Unsupported value: "Plan"'),
])
def test_a_bad_mode_is_refused_naming_the_field(kubectl: Kubectl, crd: None, mode: str, complaint: str) -> None:
    job = {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob",
           "metadata": {"name": "bad-mode", "namespace": "default"},
           "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"}, "mode": mode}}
    result = kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_mode_defaults_to_run(kubectl: Kubectl, crd: None) -> None:
    result = dry_run(kubectl, "default-mode", {"bucket": "a"}, {"bucket": "b"})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["spec"]["mode"] == "run"


def test_worker_identity_is_accepted_and_the_operators_labels_are_refused(kubectl: Kubectl, crd: None) -> None:
    job = {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob",
           "metadata": {"name": "identity", "namespace": "default"},
           "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"},
                    "workerIdentity": {
                        "serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"},
                        "podLabels": {"team": "data"}}}}
    result = kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode == 0, result.stderr
    job["spec"]["workerIdentity"]["podLabels"] = {"datamover.io/migrationjob": "other"}
    result = kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0 and "are the operator's own" in result.stderr, result.stderr
