"""The API server itself accepts and refuses spec.report and spec.keysFrom (the CRD's schema, defaults and CEL rules),
and keeps both fixed after creation. Needs only the control plane (no node)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ground.plugin_controlplane import Kubectl

pytestmark = pytest.mark.ground

CRD = Path(__file__).resolve().parents[2] / "crds" / "datamover.io_migrationjobs.yaml"
BASE: dict[str, Any] = {"source": {"bucket": "a", "prefix": "in/"}, "destination": {"bucket": "b", "prefix": "out/"}}
REPORT_AT = {"bucket": "b", "prefix": "datamover-reports/default/photos/uid/",
             "credentialsSecretRef": {"name": "cloud-b"}}


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/migrationjobs.datamover.io", "--timeout=60s")


def job(name: str, **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob",
                           "metadata": {"name": name, "namespace": "default"},
                           "spec": {**copy.deepcopy(BASE), **spec}})


def dry_run(kubectl: Kubectl, name: str, **spec: Any) -> Any:
    return kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-", input=job(name, **spec), check=False)


def test_report_and_keys_from_are_accepted_with_their_defaults(kubectl: Kubectl, crd: None) -> None:
    result = dry_run(kubectl, "ok", report={}, keysFrom={"location": REPORT_AT})
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(result.stdout)["spec"]
    assert stored["report"] == {"enabled": True}
    assert stored["keysFrom"]["format"] == "report" and stored["keysFrom"]["actions"] == ["failed"]
    assert stored["keysFrom"]["location"]["type"] == "s3"
    other = dry_run(kubectl, "ok-elsewhere", report={"location": {"bucket": "audit", "prefix": "mj/"}},
                    keysFrom={"format": "s3InventoryCsv", "location": {"bucket": "inv"}, "key": "data/x.csv.gz"})
    assert other.returncode == 0, other.stderr


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "manifest-without-key": ({"keysFrom": {"format": "lines", "location": {"bucket": "m"}}},
                             "spec.keysFrom.key (the manifest object's key) is required"),
    "unknown-format": ({"keysFrom": {"format": "parquet", "location": {"bucket": "m"}, "key": "k"}},
                       'spec.keysFrom.format: Unsupported value: "parquet"'),
    "unknown-action": ({"keysFrom": {"location": {"bucket": "m"}, "actions": ["lost"]}},
                       'spec.keysFrom.actions[0]: Unsupported value: "lost"'),
    "keys-without-location": ({"keysFrom": {"format": "report"}}, "spec.keysFrom.location: Required value"),
    "report-location-without-bucket": ({"report": {"location": {"prefix": "x/"}}},
                                       "spec.report.location.bucket: Required value"),
    "keys-with-time-bound": ({"keysFrom": {"location": {"bucket": "m"}}, "filter": {"modifiedAfter": "720h"}},
                             "cannot be used with spec.keysFrom"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_report_or_keys_from_is_refused_naming_the_field(kubectl: Kubectl, crd: None, case: str) -> None:
    spec, message = REFUSED[case]
    result = dry_run(kubectl, f"bad-{case}", **spec)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_report_and_keys_from_cannot_change_after_creation(kubectl: Kubectl, crd: None) -> None:
    name = f"fixed-{uuid.uuid4().hex[:8]}"
    kubectl("create", "-f", "-", input=job(name, report={}))
    try:
        for patch in ({"spec": {"report": None}}, {"spec": {"report": {"enabled": False}}},
                      {"spec": {"keysFrom": {"location": REPORT_AT}}}):
            result = kubectl("patch", "mj", name, "-n", "default", "--type", "merge", "-p", json.dumps(patch),
                             check=False)
            assert result.returncode != 0, patch
            assert "create a new MigrationJob" in result.stderr, result.stderr
    finally:
        kubectl("delete", "mj", name, "-n", "default", "--wait=false", check=False)
