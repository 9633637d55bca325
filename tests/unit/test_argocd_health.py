"""The ArgoCD health check for MigrationJob, run as ArgoCD runs it: Lua 5.1 (ArgoCD embeds gopher-lua, a Lua 5.1)
with the object as the global `obj`, for every phase the CRD allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]  # lupa ships no type stubs
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
HEALTH_LUA = ARGOCD / "migrationjob-health.lua"
CRD = REPO / "crds" / "datamover.io_migrationjobs.yaml"
CM_KEY = "resource.customizations.health.datamover.io_MigrationJob"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(HEALTH_LUA.read_text())
    return str(result["status"]), str(result["message"])


def migration_job(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "datamover.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": "copy-photos", "namespace": "migrations", "generation": 1},
        "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


PROGRESS = {"objects": "120/200", "bytes": "1.2GiB/3.0GiB", "percent": "60%"}

# phase -> (ArgoCD status, operator message, expected message)
CASES = {
    "pending": ("Progressing", "", "pending (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "running": ("Progressing", "started 4 worker(s)",
                "running: started 4 worker(s) (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "aborting": ("Progressing", "stopping workers at their next checkpoint",
                 "aborting: stopping workers at their next checkpoint (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "succeeded": ("Healthy", "all objects migrated and verified",
                  "succeeded: all objects migrated and verified (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "failed": ("Degraded", "2 object(s) could not be migrated",
               "failed: 2 object(s) could not be migrated (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "suspended": ("Suspended", "workers stopped; set spec.suspend to false to resume",
                  "suspended: workers stopped; set spec.suspend to false to resume (objects 120/200, bytes "
                  "1.2GiB/3.0GiB)"),
    "aborted": ("Healthy", "workers stopped; migrated objects were kept",
                "aborted: workers stopped; migrated objects were kept (stopped on request: the migration is "
                "incomplete) (objects 120/200, bytes 1.2GiB/3.0GiB)"),
    "cancelled": ("Healthy", "aborted before any worker started",
                  "cancelled: aborted before any worker started (stopped on request: nothing was migrated) "
                  "(objects 120/200, bytes 1.2GiB/3.0GiB)"),
}


def test_every_phase_of_the_crd_has_a_case() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert set(schema["properties"]["status"]["properties"]["phase"]["enum"]) == set(CASES)


@pytest.mark.parametrize("phase", sorted(CASES))
def test_phase(phase: str) -> None:
    expected_status, operator_message, expected_message = CASES[phase]
    status = {"phase": phase, "progress": PROGRESS}
    if operator_message:
        status["message"] = operator_message
    assert health(migration_job(status)) == (expected_status, expected_message)


@pytest.mark.parametrize("status", [None, {}, {"phase": ""}, {"progress": PROGRESS}])
def test_no_phase_yet_is_progressing(status: dict[str, Any] | None) -> None:
    assert health(migration_job(status)) == (
        "Progressing", "Waiting for the datamover operator to pick up the MigrationJob")


def test_without_progress_the_message_is_the_phase_and_reason() -> None:
    assert health(migration_job({"phase": "running", "message": "started 1 worker(s)"})) == (
        "Progressing", "running: started 1 worker(s)")
    assert health(migration_job({"phase": "succeeded", "progress": {"objects": "3/3"}})) == (
        "Healthy", "succeeded (objects 3/3)")


def test_an_unknown_phase_is_unknown_not_healthy() -> None:
    assert health(migration_job({"phase": "paused"})) == ("Unknown", "unknown phase paused")


def test_argocd_cm_snippet_carries_the_same_lua() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][CM_KEY] == HEALTH_LUA.read_text(), "argocd-cm.yaml's Lua drifted from migrationjob-health.lua"
