"""MigrationPlans against a real API server (no node): the schema refuses bad plans naming the field, and the
operator's plan controller turns a due schedule into one MigrationJob owned by the plan, listed in its status."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.conftest import local_process
from tests.ground.controlplane import ControlPlane
from tests.ground.plugin_controlplane import Kubectl

pytestmark = pytest.mark.ground

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = {"spec": {"source": {"bucket": "a", "endpoint": "http://127.0.0.1:9"},
                     "destination": {"bucket": "b", "endpoint": "http://127.0.0.1:9"}}}


def plan(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationPlan",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"jobTemplate": TEMPLATE, **spec}}


@pytest.fixture
def namespace(plans_namespace: str) -> str:
    return plans_namespace


@pytest.mark.parametrize(("spec", "message"), [
    ({"concurrencyPolicy": "Sometimes"}, 'spec.concurrencyPolicy: Unsupported value: "Sometimes"'),
    ({"schedule": "every day"}, "spec.schedule"),
    ({"successfulJobsHistoryLimit": -1}, "spec.successfulJobsHistoryLimit"),
    ({"jobTemplate": {"spec": {"source": {"bucket": "a", "type": "swift"}, "destination": {"bucket": "b"}}}},
     'spec.jobTemplate.spec.source.type: Unsupported value: "swift"'),
    ({"jobTemplate": {"spec": {"source": {"bucket": "a"}}}}, "spec.jobTemplate.spec.destination: Required value"),
])
def test_the_api_server_refuses_a_bad_plan_naming_the_field(kubectl: Kubectl, namespace: str, spec: dict[str, Any],
                                                            message: str) -> None:
    result = kubectl("apply", "-f", "-", input=json.dumps(plan("bad", namespace, **spec)), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_plan_template_can_be_edited(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(plan("editable", namespace, schedule="@daily")))
    edited = plan("editable", namespace, schedule="@daily")
    edited["spec"]["jobTemplate"] = {"spec": {**TEMPLATE["spec"], "destination": {"bucket": "c"}, "parallelism": 2}}
    kubectl("apply", "-f", "-", input=json.dumps(edited))
    got = json.loads(kubectl("get", "migrationplan", "editable", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["jobTemplate"]["spec"]["destination"]["bucket"] == "c"
    assert got["spec"]["concurrencyPolicy"] == "Forbid"  # the schema's default


def start_operator(control_plane: ControlPlane, namespace: str) -> subprocess.Popen[str]:
    """The datamover operator on this machine, serving `namespace` (see local_process about its runs' workers)."""
    return local_process(control_plane, "datamover.controller.main", "--namespace", namespace)


def test_a_due_schedule_makes_one_run_owned_by_the_plan(control_plane: ControlPlane, kubectl: Kubectl,
                                                        namespace: str, sole_local_operator: None) -> None:
    operator = start_operator(control_plane, namespace)
    try:
        kubectl("apply", "-f", "-", input=json.dumps(plan("every-minute", namespace, schedule="* * * * *")))
        kubectl("apply", "-f", "-", input=json.dumps(plan("on-demand", namespace)))
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120  # a run is due within a minute of the plan's creation
        while not runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = json.loads(kubectl("get", "migrationjobs", "-n", namespace, "-o", "json").stdout)["items"]
        assert len(runs) == 1, "the every-minute plan made no run within two minutes"
        (run,) = runs
        meta = run["metadata"]
        scheduled = meta["annotations"]["datamover.io/scheduled-time"]
        minute = int(time.mktime(time.strptime(scheduled, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone) // 60
        assert meta["name"] == f"every-minute-{minute}"
        assert meta["labels"]["datamover.io/plan"] == "every-minute"
        (owner,) = meta["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("MigrationPlan", "every-minute", True)
        assert run["spec"]["destination"]["bucket"] == "b"
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and not status.get("runs"):
            status = json.loads(kubectl("get", "migrationplan", "every-minute", "-n", namespace, "-o",
                                        "json").stdout).get("status") or {}
            time.sleep(0.5)
        assert status["runs"][0]["name"] == meta["name"]
        assert status["lastScheduleTime"] == scheduled
        assert status["nextScheduleTime"] > scheduled
        on_demand = json.loads(kubectl("get", "migrationplan", "on-demand", "-n", namespace, "-o", "json").stdout)
        assert on_demand["status"]["reason"] == "OnDemand"
        assert "nextScheduleTime" not in on_demand["status"]  # null in a merge patch: absent
    finally:
        operator.terminate()
        output = operator.communicate(timeout=30)[0]
    assert "event=plan-run plan=" in output, yaml.safe_dump(output[-3000:])


def test_the_documented_example_plan_is_accepted(kubectl: Kubectl, namespace: str) -> None:
    text = (REPO / "docs" / "plans.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=example)
    assert "migrationplan.datamover.io/photos-nightly created (server dry run)" in result.stdout


def test_a_run_still_going_when_the_next_is_due_follows_the_policy(control_plane: ControlPlane, kubectl: Kubectl,
                                                                  namespace: str, sole_local_operator: None) -> None:
    """Forbid keeps the running run and skips the new one; Replace deletes the running run and starts the new one."""
    operator = start_operator(control_plane, namespace)
    try:
        for policy in ("Forbid", "Replace"):
            # Suspended runs start no worker, so nothing ends them, whatever the ground has to run pods on.
            suspended = {"spec": {**TEMPLATE["spec"], "suspend": True}}
            kubectl("apply", "-f", "-", input=json.dumps(plan(policy.lower(), namespace, schedule="* * * * *",
                                                              concurrencyPolicy=policy, jobTemplate=suspended)))

        def state(name: str) -> tuple[dict[str, Any], list[str]]:
            status = json.loads(kubectl("get", "migrationplan", name, "-n", namespace, "-o",
                                        "json").stdout).get("status") or {}
            runs = json.loads(kubectl("get", "migrationjobs", "-n", namespace, "-l", f"datamover.io/plan={name}",
                                      "-o", "json").stdout)["items"]
            return status, sorted(r["metadata"]["name"] for r in runs if not r["metadata"].get("deletionTimestamp"))

        first: dict[str, str] = {}
        deadline = time.monotonic() + 200  # the first due time within a minute, the second a minute later
        while time.monotonic() < deadline and len(first) < 2:
            for name in ("forbid", "replace"):
                runs = state(name)[1]
                if runs:
                    first.setdefault(name, runs[0])
            time.sleep(1)
        assert set(first) == {"forbid", "replace"}, "a plan made no run"
        # Due times as the run names hold them (minutes since the epoch), in status's RFC 3339.
        first_due = {name: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(run.rsplit("-", 1)[1]) * 60))
                     for name, run in first.items()}
        done: dict[str, tuple[dict[str, Any], list[str]]] = {}
        while time.monotonic() < deadline and len(done) < 2:
            for name in ("forbid", "replace"):
                status, runs = state(name)
                acted_again = status.get("lastScheduleTime", "") > first_due[name]
                if acted_again and (name == "forbid" or first[name] not in runs):
                    done[name] = status, runs
            time.sleep(1)
        assert set(done) == {"forbid", "replace"}, f"no second due time acted on: {done}"
        forbid_status, forbid_runs = done["forbid"]
        assert forbid_runs == [first["forbid"]]  # the new run was skipped
        assert forbid_status["active"] == [first["forbid"]]
        replace_runs = done["replace"][1]
        assert len(replace_runs) == 1 and replace_runs != [first["replace"]], replace_runs  # replaced
    finally:
        operator.terminate()
        operator.communicate(timeout=30)
