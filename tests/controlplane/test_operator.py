"""datamover driven like a user drives it: kubectl against the real API server, the chart's operator and the worker
pods run from the image by the ground's kubelet, objects moved between two real MinIO servers and checked by rclone."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from datamover import kubeapi
from datamover.api import MigrationStatus, Phase
from tests.controlplane.conftest import Cluster, migration_job
from tests.ground.binaries import binary
from tests.ground.checker import held_uploads
from tests.ground.node import Node
from tests.ground.s3 import rclone_check
from tests.ground.stack import OPERATOR_ACCOUNT, OperatorRelease

MiB = 1024 * 1024


def new_bucket(server: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    return name


def fill(server: Any, bucket: str, *, small: int, large: int, large_size: int = 32 * MiB) -> dict[str, str]:
    """Objects named so that listing order interleaves sizes; returns key -> md5 of the content."""
    s3 = server.client()
    contents: dict[str, str] = {}
    for i in range(small):
        body = f"object {i} ".encode() * (1 + i % 50)
        key = f"data/small/{i:04d} é.txt"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain")
        contents[key] = hashlib.md5(body).hexdigest()
    for i in range(large):
        body = os.urandom(large_size)
        key = f"data/large/{i:02d}.bin"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        contents[key] = hashlib.md5(body).hexdigest()
    return contents


def digest(server: Any, bucket: str, key: str) -> str | None:
    s3 = server.client()
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    md5 = hashlib.md5()
    for chunk in iter(lambda: body.read(MiB), b""):
        md5.update(chunk)
    return md5.hexdigest()


def open_uploads(server: Any, bucket: str) -> list[tuple[str, str]]:
    return held_uploads(server.client(), bucket)


def assert_invariant(source: Any, src_bucket: str, destination: Any, dst_bucket: str,
                     contents: dict[str, str], *, remain_source: bool) -> int:
    """Each object is untouched (only in the source) or migrated whole; returns how many were migrated."""
    migrated = 0
    for key, md5 in contents.items():
        at_destination = digest(destination, dst_bucket, key)
        at_source = digest(source, src_bucket, key)
        if at_destination is None:
            assert at_source == md5, f"{key}: not migrated, so it must still be in the source unchanged"
            continue
        assert at_destination == md5, f"{key}: destination copy differs from the original"
        migrated += 1
        if remain_source:
            assert at_source == md5, f"{key}: copy mode must leave the source alone"
        else:
            assert at_source is None, f"{key}: moved object must be gone from the source"
    return migrated


def phase_of(obj: dict[str, Any]) -> Phase | None:
    return MigrationStatus.of(obj).phase


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    raise AssertionError(f"no {kind} condition in {obj.get('status')}")


# 1. happy path ---------------------------------------------------------------------------------------------------

def test_migration_succeeds_and_rclone_agrees(cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=197, large=3)
    # A workload identity's binding (unused here: the Secrets win) lands on the job's ServiceAccount and pods.
    identity = {"serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/m"},
                "podLabels": {"team": "data"}}
    cluster.apply(migration_job("happy", cloud_a, src, cloud_b, dst, parallelism=3, concurrency=4,
                                partSize="8Mi", workerIdentity=identity))

    done = cluster.wait_phase("happy", {"succeeded", "failed"}, timeout=300)
    assert phase_of(done) == "succeeded", done["status"]
    progress = done["status"]["progress"]
    assert progress["percent"] == "100%" and progress["objectsTotal"] == len(contents) == 200
    assert progress["objectsMigrated"] + progress["objectsSkipped"] == 200
    assert condition(done, "Ready")["status"] == "True" and condition(done, "Complete")["status"] == "True"
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    assert sorted(done["status"]["workers"]) == ["0", "1", "2"]
    # GitOps: the operator wrote no spec and no metadata but its finalizer (kopf's bookkeeping is in status).
    assert done["metadata"].get("annotations", {}) == {"kubectl.kubernetes.io/last-applied-configuration":
                                                       done["metadata"]["annotations"][
                                                           "kubectl.kubernetes.io/last-applied-configuration"]}
    # The finalizer is there while the job may need cleaning up after, and goes once nothing is left to clean.
    assert done["metadata"].get("finalizers", []) in ([], ["datamover.io/cleanup"])
    assert done["metadata"]["generation"] == 1
    children = "datamover.io/migrationjob=happy"
    (account,) = json.loads(cluster.kubectl("get", "serviceaccounts", "-n", cluster.namespace, "-l", children,
                                            "-o", "json").stdout)["items"]
    assert account["metadata"]["annotations"] == identity["serviceAccountAnnotations"]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", cluster.namespace, "-l", children, "-o", "json").stdout)
    assert pods["items"] and all(p["metadata"]["labels"]["team"] == "data" for p in pods["items"])
    assert all(p["spec"]["serviceAccountName"] == account["metadata"]["name"] for p in pods["items"])

    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stdout + check.stderr
    assert open_uploads(cloud_b, dst) == []

    table = cluster.kubectl("get", "mj", "-n", cluster.namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "OBJECTS", "BYTES", "RATE", "ETA", "AGE"], table
    assert "succeeded" in table and "100%" in table and "200/200" in table
    cluster.wait_event("happy", lambda e: "Succeeded" in e, "Succeeded")
    assert len(cluster.jobs()) == 1


@pytest.mark.node_runtime  # reads the operator pod's /metrics over the ground's pod network
def test_the_operator_serves_prometheus_metrics_of_every_job(
        cluster: Cluster, operator: OperatorRelease, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=4, large=0)
    cluster.apply(migration_job("counted", cloud_a, src, cloud_b, dst))
    assert phase_of(cluster.wait_phase("counted", {"succeeded", "failed"}, timeout=180)) == "succeeded"
    pod = operator.pod()
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    job = (("migrationjob", "counted"), ("namespace", cluster.namespace))
    assert samples[("datamover_job_objects_total", (*job, ("outcome", "migrated")))] == 4
    assert samples[("datamover_job_phase", (*job, ("phase", "succeeded")))] == 1
    assert samples[("datamover_migrationjobs", (("phase", "succeeded"),))] >= 1
    assert samples[("datamover_reconcile_duration_seconds_count", ())] > 0
    assert samples[("datamover_reconcile_queue_wait_seconds_count", (("urgent", "true"),))] > 0  # a new job


# 2. abort mid-migration -----------------------------------------------------------------------------------------

def test_abort_mid_migration_stops_cleanly_and_moves_only_verified_objects(
        cluster: Cluster, control_plane: Any, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=40, large=12)
    # Throttled, so that the abort lands while most objects are still to go however fast the data plane is.
    cluster.apply(migration_job("stopme", cloud_a, src, cloud_b, dst, parallelism=2, concurrency=2,
                                partSize="5Mi", remainSource=False, abortGracePeriodSeconds=30,
                                throttle={"bytesPerSecond": "4Mi"}))
    cluster.wait("stopme", lambda o: any(w.get("openUploads") for w in (o.get("status") or {})
                                         .get("workers", {}).values()), "an open multipart upload")

    # As a user would: the kubectl plugin shows the job running, per worker, then aborts it and waits for the end.
    shown = kubectl_datamover(cluster, control_plane, "status", "stopme")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{cluster.namespace}/stopme: running"), shown.stdout
    assert any(line.startswith("  worker 0") for line in lines) and any(line.startswith("  worker 1") for line in lines)
    stopped = kubectl_datamover(cluster, control_plane, "abort", "stopme", "--wait", "90")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines() == ["migrationjob.datamover.io/stopme abort requested",
                                           "migrationjob.datamover.io/stopme aborted"]
    final = cluster.get("stopme")
    assert final["status"]["abortRequestedTime"]
    # How fast is measured by bench/abort_latency.py, not asserted here.
    assert phase_of(final) == "aborted", final["status"]
    assert condition(final, "AbortRequested")["status"] == "True"
    assert final["status"]["completionTime"]

    assert open_uploads(cloud_b, dst) == []
    migrated = assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=False)
    assert migrated < len(contents), "the abort came too late to stop anything"
    assert all(not w.get("openUploads") for w in final["status"]["workers"].values())
    cluster.wait_event("stopme", lambda e: "AbortRequested" in e, "AbortRequested")
    cluster.wait_event("stopme", lambda e: "Aborted" in e, "Aborted")


def test_suspend_stops_cleanly_frees_the_job_and_resume_finishes_the_move(
        cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=10, large=6)
    cluster.apply(migration_job("pause", cloud_a, src, cloud_b, dst, parallelism=2, concurrency=2, partSize="5Mi",
                                remainSource=False))
    cluster.wait("pause", lambda o: any(w.get("openUploads") for w in (o.get("status") or {})
                                        .get("workers", {}).values()), "an open multipart upload")
    cluster.kubectl("patch", "mj", "pause", "-n", cluster.namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":true}}')
    paused = cluster.wait("pause", lambda o: (o.get("status") or {}).get("reason") == "Suspended",
                          "suspended with its workers gone", timeout=120)
    assert phase_of(paused) == "suspended" and condition(paused, "Suspended")["status"] == "True"
    # Nothing half-done: no upload fragment, every object untouched or moved whole, no worker, no Job.
    assert open_uploads(cloud_b, dst) == []
    assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=False)
    assert all(not w.get("openUploads") and not w.get("uploadIntents") for w in paused["status"]["workers"].values())
    deadline = time.monotonic() + 60
    while cluster.jobs():
        assert time.monotonic() < deadline, "the suspended job's Job was not removed"
        time.sleep(0.5)

    cluster.kubectl("patch", "mj", "pause", "-n", cluster.namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":false}}')
    done = cluster.wait_phase("pause", {"succeeded", "failed", "aborted"}, timeout=300)
    assert phase_of(done) == "succeeded", done["status"]
    assert condition(done, "Suspended")["status"] == "False"
    assert open_uploads(cloud_b, dst) == []
    assert assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=False) == len(contents)
    cluster.wait_event("pause", lambda e: "Suspended" in e, "Suspended")


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        _Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


def test_the_webhook_hears_of_the_end_and_a_bad_webhook_url_fails_the_job_naming_its_secret(
        cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    # The receiver listens where the workers already reach the stores, so the operator reaches it wherever it runs.
    host = urllib.parse.urlsplit(cloud_a.endpoint).hostname
    server = http.server.ThreadingHTTPServer((host, 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Webhook.received = []
    try:
        url = f"http://{host}:{server.server_port}/hooks?token=t0ps3cret"
        cluster.kubectl("create", "secret", "generic", "hook", "-n", cluster.namespace, f"--from-literal=url={url}")
        src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
        fill(cloud_a, src, small=3, large=0)
        job = migration_job("told", cloud_a, src, cloud_b, dst)
        job["spec"]["notify"] = {"webhook": {"urlSecretRef": {"name": "hook"}}}
        cluster.apply(job)
        done = cluster.wait("told", lambda o: bool((o.get("status") or {}).get("notification")), "a notification",
                            timeout=180)
        assert phase_of(done) == "succeeded"
        assert done["status"]["notification"]["delivered"] is True
        assert condition(done, "Notified")["status"] == "True"
        event = next(e for e in _Webhook.received if e["subject"] == f"{cluster.namespace}/told")
        assert event["type"] == "io.datamover.migrationjob.finished" and event["data"]["phase"] == "succeeded"
        assert event["data"]["progress"]["objectsMigrated"] == 3
        assert "t0ps3cret" not in json.dumps(done["status"])
    finally:
        server.shutdown()

    cluster.kubectl("create", "secret", "generic", "badhook", "-n", cluster.namespace, "--from-literal=url=not-a-url")
    bad = migration_job("badhook", cloud_a, "a", cloud_b, "b")
    bad["spec"]["notify"] = {"webhook": {"urlSecretRef": {"name": "badhook"}}}
    cluster.apply(bad)
    failed = cluster.wait_phase("badhook", {"failed", "running", "succeeded"}, timeout=60)
    assert phase_of(failed) == "failed" and failed["status"]["reason"] == "InvalidSpec"
    assert "spec.notify.webhook.urlSecretRef" in failed["status"]["message"]
    message = failed["status"]["message"]
    assert f"{cluster.namespace}/badhook" in message and "not-a-url" not in message
    assert all(j["metadata"]["labels"].get("datamover.io/migrationjob") != "badhook" for j in cluster.jobs())


def test_deleting_a_running_job_aborts_it_first(cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=10, large=8)
    cluster.apply(migration_job("gone", cloud_a, src, cloud_b, dst, concurrency=2, partSize="5Mi",
                                remainSource=False))
    cluster.wait("gone", lambda o: any(w.get("openUploads") for w in (o.get("status") or {})
                                       .get("workers", {}).values()), "an open multipart upload")
    assert "datamover.io/cleanup" in cluster.get("gone")["metadata"]["finalizers"]
    cluster.kubectl("delete", "mj", "gone", "-n", cluster.namespace, "--timeout=90s")
    deadline = time.monotonic() + 60
    while any(p["metadata"].get("labels", {}).get("datamover.io/migrationjob") == "gone" for p in cluster.pods()):
        assert time.monotonic() < deadline, "worker pods outlived their MigrationJob"
        time.sleep(0.5)
    assert open_uploads(cloud_b, dst) == []
    assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=False)


def kubectl_datamover(cluster: Cluster, control_plane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl datamover ...` as a user runs it: the real kubectl finding the plugin the package installs on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "KUBECONFIG": str(control_plane.admin_kubeconfig)}
    return subprocess.run([str(binary("kubectl")), "datamover", "-n", cluster.namespace, *args], env=env,
                          capture_output=True, text=True, timeout=180)


# 3. abort before start / after the end ---------------------------------------------------------------------------

def test_abort_before_start_cancels_and_starts_no_worker(cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=3, large=0)
    cluster.apply(migration_job("never", cloud_a, src, cloud_b, dst, abort=True))
    final = cluster.wait_phase("never", {"cancelled", "running", "aborted", "succeeded"}, timeout=30)
    assert phase_of(final) == "cancelled"
    time.sleep(2)
    assert cluster.jobs() == [] and cluster.pods() == []
    assert cloud_b.client().list_objects_v2(Bucket=dst).get("KeyCount") == 0


def test_abort_of_a_finished_job_is_refused_by_the_api_server(cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=3, large=0)
    cluster.apply(migration_job("finished", cloud_a, src, cloud_b, dst))
    # Settled: succeeded, and the finalizer gone (kopf drops it once nothing is left to clean up, which is a write).
    before = cluster.wait("finished", lambda o: phase_of(o) == "succeeded" and not o["metadata"].get("finalizers"),
                          "succeeded and settled", timeout=120)
    result = cluster.kubectl("patch", "mj", "finished", "-n", cluster.namespace, "--type", "merge",
                             "-p", '{"spec":{"abort":true}}', check=False)
    assert result.returncode != 0
    assert "already ended (phase: succeeded)" in result.stderr, result.stderr
    after = cluster.get("finished")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["abort"] is False


# 4. a worker killed mid-multipart ---------------------------------------------------------------------------------

def _signal_worker(cluster: Cluster, node: Node, pod: str, sig: str = "SIGKILL") -> None:
    """Signal a worker pod's container through the node's containerd (`ctr tasks kill`), as a crash or a frozen
    machine would; the kubelet and the Job controller see what follows as they would in any cluster.

    The worker may report before the kubelet's next status sync says its container runs (the pod still shows
    ContainerCreating): wait for the container's ID rather than read the pod once."""
    deadline = time.monotonic() + 30
    while True:
        pod_status = cluster.api.get(kubeapi.PODS, cluster.namespace, pod).get("status") or {}
        statuses = pod_status.get("containerStatuses") or []
        if statuses and statuses[0].get("containerID"):
            break
        assert time.monotonic() < deadline, f"pod {pod} has no running container after 30 s: {statuses}"
        time.sleep(0.2)
    node.signal_container(statuses[0]["containerID"], sig)


@pytest.mark.node_runtime
def test_worker_killed_mid_multipart_is_retried_and_the_job_still_succeeds(
        cluster: Cluster, node: Node, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=10, large=4)
    cluster.apply(migration_job("crash", cloud_a, src, cloud_b, dst, concurrency=1, partSize="5Mi"))
    mid = cluster.wait("crash", lambda o: bool((o.get("status") or {}).get("workers", {}).get("0", {})
                                                .get("openUploads")), "an open multipart upload")
    _signal_worker(cluster, node, mid["status"]["workers"]["0"]["pod"])

    final = cluster.wait_phase("crash", {"succeeded", "failed", "aborted"}, timeout=300)
    assert phase_of(final) == "succeeded", final["status"]
    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stdout + check.stderr
    assert open_uploads(cloud_b, dst) == []
    job = cluster.jobs()[0]
    assert job["status"].get("failed") == 1 and job["status"].get("succeeded") == 1


@pytest.mark.node_runtime
def test_frozen_worker_is_killed_after_the_grace_period_and_its_uploads_aborted_by_the_janitor(
        cluster: Cluster, node: Node, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=5, large=6)
    cluster.apply(migration_job("frozen", cloud_a, src, cloud_b, dst, concurrency=1, partSize="5Mi",
                                abortGracePeriodSeconds=3))
    # The freeze must catch the worker holding an upload open: between the status read that shows one and the
    # SIGSTOP, the worker may complete that object and report none. Then it is let go and frozen again at its next
    # upload (one object in flight, six multipart objects).
    for _ in range(5):
        mid = cluster.wait("frozen", lambda o: bool((o.get("status") or {}).get("workers", {}).get("0", {})
                                                     .get("openUploads")), "an open multipart upload")
        pod = mid["status"]["workers"]["0"]["pod"]
        _signal_worker(cluster, node, pod, "SIGSTOP")  # it can no longer clean up
        recorded = {u["uploadId"] for u in cluster.get("frozen")["status"]["workers"]["0"]["openUploads"]}
        if recorded and {upload_id for _, upload_id in open_uploads(cloud_b, dst)} >= recorded:
            break
        _signal_worker(cluster, node, pod, "SIGCONT")
    else:
        raise AssertionError("five freezes of the worker never caught an upload it had reported open")

    cluster.kubectl("patch", "mj", "frozen", "-n", cluster.namespace, "--type", "merge",
                    "-p", '{"spec":{"abort":true}}')
    final = cluster.wait_phase("frozen", {"aborted", "succeeded", "failed"}, timeout=60)
    assert phase_of(final) == "aborted", final["status"]
    assert open_uploads(cloud_b, dst) == [], "the janitor must abort what the frozen worker left open"
    assert final["status"]["workers"]["0"]["openUploads"] == []
    cluster.wait_event("frozen", lambda e: "UploadsAborted" in e and "aborted 1 multipart" in e, "UploadsAborted")
    assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=True)


@pytest.fixture
def impatient_operator(operator: OperatorRelease) -> Iterator[OperatorRelease]:
    """The session's operator, rolled out to take a worker silent for 20 s for frozen (`kubectl set env`), and back."""
    operator.set_env(DATAMOVER_WORKER_HEARTBEAT_TIMEOUT="20")
    yield operator
    operator.set_env(DATAMOVER_WORKER_HEARTBEAT_TIMEOUT=None)


@pytest.mark.node_runtime
def test_worker_frozen_without_an_abort_is_restarted_when_its_heartbeat_stops_and_the_job_succeeds(
        cluster: Cluster, node: Node, impatient_operator: OperatorRelease, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=5, large=4)
    cluster.apply(migration_job("stalled", cloud_a, src, cloud_b, dst, concurrency=1, partSize="5Mi"))
    mid = cluster.wait("stalled", lambda o: bool((o.get("status") or {}).get("workers", {}).get("0", {})
                                                  .get("openUploads")), "an open multipart upload")
    frozen = mid["status"]["workers"]["0"]["pod"]
    _signal_worker(cluster, node, frozen, "SIGSTOP")  # alive to the node, silent to the operator

    final = cluster.wait_phase("stalled", {"succeeded", "failed", "aborted"}, timeout=300)
    assert phase_of(final) == "succeeded", final["status"]
    cluster.wait_event("stalled", lambda e: "WorkerUnresponsive" in e and f"pod {frozen}" in e, "WorkerUnresponsive")
    assert final["status"]["workers"]["0"]["pod"] != frozen
    assert open_uploads(cloud_b, dst) == [], "the successor must close what the frozen worker left open"
    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stdout + check.stderr
    assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=True)


# 5. the operator killed and restarted mid-job --------------------------------------------------------------------

def test_operator_restart_mid_job_converges_with_one_job(
        cluster: Cluster, operator: OperatorRelease, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=20, large=6)
    cluster.apply(migration_job("restart", cloud_a, src, cloud_b, dst, parallelism=2, concurrency=1,
                                partSize="5Mi"))
    cluster.wait_phase("restart", {"running"}, timeout=30)
    operator.kill()  # SIGKILL to its container; the kubelet restarts it (kill() waits until it is healthy again)
    final = cluster.wait_phase("restart", {"succeeded", "failed"}, timeout=300)
    assert phase_of(final) == "succeeded", final["status"]
    assert len(cluster.jobs()) == 1
    assert rclone_check(cloud_a, src, cloud_b, dst).returncode == 0


# 6. bad input --------------------------------------------------------------------------------------------------

def test_missing_secret_fails_naming_it_and_starts_nothing(cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    contents = fill(cloud_a, src, small=3, large=0)
    job = migration_job("nosecret", cloud_a, src, cloud_b, dst, remainSource=False)
    job["spec"]["destination"]["credentialsSecretRef"]["name"] = "does-not-exist"
    cluster.apply(job)
    final = cluster.wait_phase("nosecret", {"failed", "running", "succeeded"}, timeout=30)
    assert phase_of(final) == "failed"
    failed = condition(final, "Failed")
    assert failed["status"] == "True" and "does-not-exist" in failed["message"]
    cluster.wait_event("nosecret", lambda e: "does-not-exist" in e and e.startswith("Warning"), "Warning naming it")
    assert cluster.jobs() == []
    assert assert_invariant(cloud_a, src, cloud_b, dst, contents, remain_source=False) == 0


@pytest.mark.parametrize("breakage", ["wrong-credentials", "missing-bucket"])
def test_bad_credentials_or_bucket_fail_fast_naming_what_is_wrong(
        cluster: Cluster, cloud_a: Any, cloud_b: Any, breakage: str) -> None:
    src = new_bucket(cloud_a)
    contents = fill(cloud_a, src, small=3, large=0)
    dst = new_bucket(cloud_b) if breakage == "wrong-credentials" else "no-such-bucket"
    job = migration_job("bad", cloud_a, src, cloud_b, dst, remainSource=False)
    if breakage == "wrong-credentials":
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong"},
                       "stringData": {"accessKeyId": "nobody", "secretAccessKey": "not-the-secret"}})
        job["spec"]["destination"]["credentialsSecretRef"]["name"] = "wrong"
    cluster.apply(job)
    final = cluster.wait_phase("bad", {"failed", "succeeded"}, timeout=120)
    assert phase_of(final) == "failed"
    message = condition(final, "Failed")["message"]
    assert cloud_b.endpoint in message and dst in message, message
    assert "not-the-secret" not in message
    cluster.wait_event("bad", lambda e: e.startswith("Warning") and dst in e, "Warning naming the bucket")
    assert all(digest(cloud_a, src, key) == md5 for key, md5 in contents.items())


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no-source": ({"source": None}, "spec.source: Required value"),
    "no-destination-bucket": ({"destination": {"endpoint": "http://x:1"}}, "spec.destination.bucket: Required value"),
    "part-size-too-small": ({"partSize": "1Mi"}, "at least 5Mi"),
    "parallelism-zero": ({"parallelism": 0}, "spec.parallelism: Invalid value"),
    "parallelism-too-big": ({"parallelism": 65}, "spec.parallelism: Invalid value"),
    "endpoint-not-a-url": ({"source": {"bucket": "x", "endpoint": "minio:9000"}}, "spec.source.endpoint"),
    "filter-min-over-max": ({"filter": {"minSize": "2Mi", "maxSize": 1024}},
                            "spec.filter.minSize must not be larger than spec.filter.maxSize"),
    "filter-size-not-a-size": ({"filter": {"minSize": "lots"}}, "spec.filter.minSize must be a size"),
    "filter-time-not-a-time": ({"filter": {"modifiedAfter": "yesterday"}}, "spec.filter.modifiedAfter"),
    "filter-empty-pattern": ({"filter": {"exclude": ["*.tmp", ""]}}, "spec.filter.exclude[1]"),
    "throttle-too-low": ({"throttle": {"bytesPerSecond": 100}}, "spec.throttle.bytesPerSecond must be a quantity"),
    "throttle-no-requests": ({"throttle": {"requestsPerSecond": 0}}, "spec.throttle.requestsPerSecond"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_migrationjobs_are_rejected_by_the_api_server(cluster: Cluster, cloud_a: Any, cloud_b: Any,
                                                               case: str) -> None:
    change, message = INVALID[case]
    job = migration_job(f"invalid-{case}", cloud_a, "a", cloud_b, "b")
    for key, value in change.items():
        if value is None:
            del job["spec"][key]
        else:
            job["spec"][key] = value
    result = cluster.apply(job, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_abort_cannot_be_taken_back_and_the_rest_of_spec_is_immutable(
        cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    cluster.apply(migration_job("fixed", cloud_a, "no-such-source", cloud_b, "b", abort=True))
    cluster.wait_phase("fixed", {"cancelled"}, timeout=30)
    back = cluster.kubectl("patch", "mj", "fixed", "-n", cluster.namespace, "--type", "merge",
                           "-p", '{"spec":{"abort":false}}', check=False)
    assert back.returncode != 0 and "cannot be set back to false" in back.stderr, back.stderr
    moved = cluster.kubectl("patch", "mj", "fixed", "-n", cluster.namespace, "--type", "merge",
                            "-p", '{"spec":{"parallelism":4}}', check=False)
    assert moved.returncode != 0 and "create a new MigrationJob" in moved.stderr, moved.stderr
    refiltered = cluster.kubectl("patch", "mj", "fixed", "-n", cluster.namespace, "--type", "merge",
                                 "-p", '{"spec":{"filter":{"exclude":["*"]}}}', check=False)
    assert refiltered.returncode != 0 and "create a new MigrationJob" in refiltered.stderr, refiltered.stderr
    # The throttle may change at any time (the workers follow it).
    cluster.kubectl("patch", "mj", "fixed", "-n", cluster.namespace, "--type", "merge",
                    "-p", '{"spec":{"throttle":{"bytesPerSecond":"10Mi","requestsPerSecond":50}}}')
    assert cluster.get("fixed")["spec"]["throttle"] == {"bytesPerSecond": "10Mi", "requestsPerSecond": 50}


def test_a_filtered_move_moves_what_it_selects_and_leaves_the_rest_untouched(
        cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    s3 = cloud_a.client()
    bodies = {"photos/2024/a.jpg": b"a" * 2000, "photos/2024/b.JPG": b"b" * 3000, "photos/tmp/c.jpg": b"c" * 100,
              "photos/big.jpg": b"d" * 200_000, "photos/notes.txt": b"e" * 100, "photos/2023/f.jpg": b"f" * 50}
    for key, body in bodies.items():
        s3.put_object(Bucket=src, Key=key, Body=body)
    selected = {"photos/2024/a.jpg", "photos/2024/b.JPG", "photos/2023/f.jpg"}
    cluster.apply(migration_job("picky", cloud_a, src, cloud_b, dst, remainSource=False, filter={
        "include": ["*.{jpg,JPG}"], "exclude": ["/photos/tmp/**"], "maxSize": "100Ki", "modifiedAfter": "1h"}))

    done = cluster.wait_phase("picky", {"succeeded", "failed"}, timeout=120)
    assert phase_of(done) == "succeeded", done["status"]
    progress = done["status"]["progress"]
    assert (progress["objectsTotal"], progress["objectsExcluded"], progress["percent"]) == (3, 3, "100%")
    # Judged with plain boto3: the selected objects moved whole, the others never left (nor were copied).
    at_destination = {o["Key"]: cloud_b.client().get_object(Bucket=dst, Key=o["Key"])["Body"].read()
                      for o in cloud_b.client().list_objects_v2(Bucket=dst).get("Contents", [])}
    in_source = {o["Key"] for o in s3.list_objects_v2(Bucket=src).get("Contents", [])}
    assert at_destination == {key: bodies[key] for key in selected}
    assert in_source == set(bodies) - selected



def test_tags_travel_and_the_destination_class_and_encryption_apply_to_every_copy(
        cluster: Cluster, cloud_a: Any, cloud_b: Any) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    s3 = cloud_a.client()
    s3.put_object(Bucket=src, Key="tagged.csv", Body=b"a,b\n" * 100, Tagging="owner=finance&retention=7y")
    s3.put_object(Bucket=src, Key="plain.bin", Body=os.urandom(12 * MiB))  # in parts
    destination = {"storageClass": "REDUCED_REDUNDANCY", "serverSideEncryption": {"type": "SSE-S3"}}
    job = migration_job("exact", cloud_a, src, cloud_b, dst, partSize="5Mi")
    job["spec"]["destination"].update(destination)
    cluster.apply(job)

    done = cluster.wait_phase("exact", {"succeeded", "failed"}, timeout=120)
    assert phase_of(done) == "succeeded", done["status"]
    # Judged with plain boto3 on the destination.
    s3b = cloud_b.client()
    for key in ("tagged.csv", "plain.bin"):
        head = s3b.head_object(Bucket=dst, Key=key)
        assert (head.get("StorageClass"), head.get("ServerSideEncryption")) == ("REDUCED_REDUNDANCY", "AES256"), key
    tags = s3b.get_object_tagging(Bucket=dst, Key="tagged.csv")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"owner": "finance", "retention": "7y"}
    check = rclone_check(cloud_a, src, cloud_b, dst)
    assert check.returncode == 0, check.stdout + check.stderr


# 7. RBAC -------------------------------------------------------------------------------------------------------

def test_worker_token_reaches_only_its_own_migrationjob(cluster: Cluster, control_plane: Any, cloud_a: Any,
                                                       cloud_b: Any, tmp_path: Path) -> None:
    src, dst = new_bucket(cloud_a), new_bucket(cloud_b)
    fill(cloud_a, src, small=2, large=0)
    cluster.apply(migration_job("mine", cloud_a, src, cloud_b, dst))
    cluster.apply(migration_job("theirs", cloud_a, src, cloud_b, dst, abort=True))
    cluster.wait_phase("mine", {"succeeded"}, timeout=120)
    kubeconfig = control_plane.service_account_kubeconfig(cluster.namespace, "datamover-mine",
                                                          tmp_path / "worker.kubeconfig")

    def as_worker(*args: str) -> Any:
        return cluster.kubectl(*args, "-n", cluster.namespace, kubeconfig=kubeconfig, check=False)

    assert as_worker("get", "mj", "mine").returncode == 0
    other = as_worker("get", "mj", "theirs")
    assert other.returncode != 0 and "Forbidden" in other.stderr, other.stderr
    secrets = as_worker("get", "secret", "cloud-a")
    assert secrets.returncode != 0 and "Forbidden" in secrets.stderr, secrets.stderr
    spec_patch = as_worker("patch", "mj", "mine", "--type", "merge", "-p", '{"spec":{"abort":true}}')
    assert spec_patch.returncode != 0 and "Forbidden" in spec_patch.stderr


def test_operator_runs_without_cluster_admin(operator: OperatorRelease, cluster: Cluster) -> None:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": "system:serviceaccount:datamover-system:datamover-operator",
        "resourceAttributes": {"verb": "delete", "resource": "secrets", "namespace": cluster.namespace}}}
    verdict = cluster.api.create(kubeapi.SUBJECT_ACCESS_REVIEWS, None, review).get("status")
    assert verdict is not None and not verdict.get("allowed")
    # Its pod holds its ServiceAccount's token and nothing stronger: no host access, no other volume with secrets.
    spec = operator.pod()["spec"]
    assert spec["serviceAccountName"] == OPERATOR_ACCOUNT
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("secret" not in volume and "hostPath" not in volume for volume in spec["volumes"]), spec["volumes"]
