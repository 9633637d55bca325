"""End to end on the real node, as a Gelato client uses datamover: a plan created over HTTP runs into a job that
migrates every object (the stores agree), a throttled run aborted mid-way answers `aborted` with nothing half-made,
an ended job's abort is refused naming its phase, and a plan on a Gelato schedule policy fires by itself."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.conftest import Cluster, local_process
from tests.controlplane.test_operator import assert_invariant, fill, new_bucket, open_uploads
from tests.ground.procs import free_port
from tests.ground.s3 import rclone_check
from tests.ground.stack import KubeCluster

pytestmark = pytest.mark.ground

REPO = Path(__file__).resolve().parents[2]
ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "gelato-portal"},
    "rules": [{"apiGroups": ["datamover.io"], "resources": ["migrationplans", "migrationjobs"],
               "verbs": ["get", "list", "create", "delete", "patch"]},
              {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
              {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]}],
}


def conn(server: Any, bucket: str) -> dict[str, Any]:
    config = {"endpoint": server.endpoint, "bucketname": bucket, "region": server.region,
              "access": server.access_key, "security": server.secret_key}
    return {"storType": "ceph-s3", "connConfig": [{"key": k, "value": v} for k, v in config.items()]}


class Gelato:
    """A Gelato client: JSON over HTTP with a bearer token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def job(self, tenant: str, job_id: str) -> dict[str, Any]:
        status, answer = self("GET", f"/v1/{tenant}/jobs/{job_id}")
        assert status == 200, answer
        return dict(answer["job"])

    def wait_job(self, tenant: str, job_id: str, done: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(tenant, job_id)
        while job["status"] not in done and time.monotonic() < deadline:
            time.sleep(0.5)
            job = self.job(tenant, job_id)
        return job


@pytest.fixture
def gelato(control_plane: KubeCluster, cluster: Cluster) -> Iterator[Gelato]:
    """datamover-api on this machine against the ground's cluster, and a token of a portal account that RBAC lets
    manage plans and jobs in the test's namespace."""
    port = free_port()
    api = local_process(control_plane, "datamover.facade.main", "--address", "127.0.0.1", "--port", str(port),
                        output=subprocess.DEVNULL)
    cluster.kubectl("create", "serviceaccount", "portal", "-n", cluster.namespace)
    cluster.apply(ROLE)
    cluster.kubectl("create", "rolebinding", "portal", "-n", cluster.namespace, "--role=gelato-portal",
                    f"--serviceaccount={cluster.namespace}:portal")
    token = cluster.kubectl("create", "token", "portal", "-n", cluster.namespace).stdout.strip()
    client = Gelato(f"http://127.0.0.1:{port}", token)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client("GET", "/openapi.json")
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield client
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_a_gelato_client_migrates_aborts_and_a_schedule_fires(cluster: Cluster, gelato: Gelato, cloud_a: Any,
                                                              cloud_b: Any) -> None:
    tenant = cluster.namespace  # the default mapping: a tenant is the namespace of its name
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=40, large=2, large_size=16 * 1024 * 1024)

    # Create a plan, run it, poll the job to the end: every object is at the destination.
    status, created = gelato("POST", f"/v1/{tenant}/plans", {
        "name": "photos", "type": "migration", "remainSource": True,
        "sourceConn": conn(cloud_a, src), "destConn": conn(cloud_b, dst)})
    assert status == 200, created
    plan_id = created["plan"]["id"]
    assert cloud_a.secret_key not in json.dumps(created) and cloud_b.secret_key not in json.dumps(created)
    status, run = gelato("POST", f"/v1/{tenant}/plans/{plan_id}/run")
    assert status == 200, run
    job = gelato.wait_job(tenant, run["jobId"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    assert (job["totalCount"], job["passedCount"], job["progress"]) == (len(contents), len(contents), 100)
    assert job["passedCapacity"] == job["totalCapacity"] > 0 and job["endTime"]
    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stdout + check.stderr

    # Abort of an ended job: an error naming its phase.
    status, refused = gelato("POST", f"/v1/{tenant}/jobs/{run['jobId']}/abort")
    assert status == 409 and "succeeded" in refused["message"]

    # A throttled run to a fresh bucket, aborted once it has written: aborted, nothing half-made.
    dst2 = new_bucket(cloud_b)
    cluster.kubectl("patch", "migrationplan", plan_id, "-n", tenant, "--type=merge", "-p", json.dumps({"spec": {
        "jobTemplate": {"spec": {"throttle": {"bytesPerSecond": "2Mi"}, "destination": {"bucket": dst2}}}}}))
    status, run2 = gelato("POST", f"/v1/{tenant}/plans/{plan_id}/run")
    assert status == 200, run2
    deadline = time.monotonic() + 180
    while gelato.job(tenant, run2["jobId"])["passedCapacity"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, aborted = gelato("POST", f"/v1/{tenant}/jobs/{run2['jobId']}/abort")
    assert (status, aborted) == (200, {"Id": run2["jobId"], "Status": "aborted"})
    assert_invariant(cloud_a, src, cloud_b, dst2, contents, remain_source=True)
    assert open_uploads(cloud_b, dst2) == []

    # A plan on a Gelato schedule policy (every minute, at second 0) fires by itself, and its run migrates everything.
    dst3 = new_bucket(cloud_b)
    status, policy = gelato("POST", f"/v1/{tenant}/policies", {
        "name": "every minute", "schedule": {"type": "cron", "tiggerProperties": "0 * * * * *"}})
    assert status == 200, policy
    status, every = gelato("POST", f"/v1/{tenant}/plans", {
        "name": "every minute", "type": "migration", "remainSource": True, "sourceConn": conn(cloud_a, src),
        "destConn": conn(cloud_b, dst3), "policyId": policy["policy"]["id"], "policyEnabled": True})
    assert status == 200 and every["plan"]["policyEnabled"], every
    deadline = time.monotonic() + 90
    runs: list[dict[str, Any]] = []
    while not runs and time.monotonic() < deadline:
        time.sleep(1)
        runs = [j for j in gelato("GET", f"/v1/{tenant}/jobs")[1]["jobs"] if j["planId"] == every["plan"]["id"]]
    assert runs, "the every-minute plan made no run within 90 s"
    scheduled = gelato.wait_job(tenant, runs[0]["id"], {"succeeded", "failed"})
    assert scheduled["status"] == "succeeded", scheduled
    cluster.kubectl("patch", "migrationplan", every["plan"]["id"], "-n", tenant, "--type=merge", "-p",
                    '{"spec": {"suspend": true}}')
    check = rclone_check(cloud_a, src, cloud_b, dst3)
    assert check.returncode == 0, check.stdout + check.stderr

