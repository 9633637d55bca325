"""Hundreds of MigrationJobs at once, as a platform team's script creates them: every job gets a phase, the ones over
the limit say they are queued, no more than the limit ever run, all end where they should with correct data, aborts
land on queued and running jobs alike, and an operator killed in the middle picks everything up again.

Judged only from what a user can see: the MigrationJobs' status (through a watch), the batch Jobs, and the objects in
the buckets. Timing is the bench's business (bench/operator_scale.py); nothing here asserts on it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from typing import Any

from datamover import kubeapi
from tests.controlplane.conftest import Cluster, migration_job
from tests.ground.checker import held_uploads
from tests.ground.fleet import FINAL_PHASES, FleetWatch, create_all
from tests.ground.stack import GROUND_MAX_CONCURRENT_JOBS, OperatorRelease

JOBS = int(os.environ.get("DATAMOVER_SCALE_JOBS", "200"))
# The chart's maxConcurrentJobs as the ground installs it (a Helm value): well below the fleet's size. Each job has
# one worker pod; pods that ended do not count against the kubelet's maxPods, so at most LIMIT run at once.
LIMIT = GROUND_MAX_CONCURRENT_JOBS
OBJECTS_PER_JOB = 3
QUEUED_ABORTS = 10  # the newest jobs, aborted right after creation: far back in the queue
RANDOM_ABORTS = 10  # others, aborted at a seeded random moment of their life


def _name(i: int) -> str:
    return f"fleet-{i:03d}"


def _fill(server: Any, bucket: str) -> dict[str, bytes]:
    s3 = server.client()
    s3.create_bucket(Bucket=bucket)
    contents: dict[str, bytes] = {}
    for i in range(JOBS):
        for j in range(OBJECTS_PER_JOB):
            key = f"{_name(i)}/obj-{j}.bin"
            body = f"{key} ".encode() * (50 + 37 * j)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            contents[key] = body
    return contents


def _objects(server: Any, bucket: str, prefix: str) -> dict[str, str]:
    s3 = server.client()
    found: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def test_hundreds_of_jobs_queue_run_abort_and_survive_an_operator_restart(
        cluster: Cluster, operator: OperatorRelease, cloud_a: Any, cloud_b: Any) -> None:
    env = {e["name"]: e.get("value") for e in operator.pod()["spec"]["containers"][0]["env"]}
    assert env["DATAMOVER_MAX_CONCURRENT_JOBS"] == str(LIMIT), "the ground installs the chart with this limit"
    seed = int(os.environ.get("DATAMOVER_SCALE_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    print(f"operator scale: {JOBS} jobs, limit {LIMIT}, seed {seed} (DATAMOVER_SCALE_SEED={seed} reproduces it)")
    src, dst = f"fleet-src-{seed}", f"fleet-dst-{seed}"
    contents = _fill(cloud_a, src)
    cloud_b.client().create_bucket(Bucket=dst)
    manifests = [migration_job(_name(i), cloud_a, src, cloud_b, dst, concurrency=2) for i in range(JOBS)]
    for i, manifest in enumerate(manifests):
        manifest["spec"]["source"]["prefix"] = f"{_name(i)}/"
        manifest["spec"]["destination"]["prefix"] = f"{_name(i)}/"
    queued_aborts = [_name(i) for i in range(JOBS - QUEUED_ABORTS, JOBS)]
    random_aborts = sorted(rng.sample([_name(i) for i in range(JOBS - QUEUED_ABORTS)], RANDOM_ABORTS))
    def abort(name: str) -> None:
        try:
            cluster.api.patch(kubeapi.MIGRATION_JOBS, cluster.namespace, name, {"spec": {"abort": True}})
        except kubeapi.ApiError as error:
            # Too late is an answer too: the API server refuses abort on a job that has ended.
            if error.status != 422 or "already ended" not in error.body:
                raise

    with FleetWatch(cluster.api, cluster.namespace) as fleet:
        create_all(cluster.api, cluster.namespace, manifests, fleet)
        fleet.wait(queued_aborts, lambda t: "Queued" in t.reasons, "shown as Queued", timeout=120)
        for name in queued_aborts:
            abort(name)

        # Random aborts: each fires when its job first reaches a seeded moment (queued, starting, running, or a
        # random delay after creation), from its own thread so they land while everything else goes on.
        def abort_later(name: str, moment: str, delay: float) -> None:
            stop = threading.Event()
            while not stop.wait(0.05):
                timeline = fleet.snapshot().get(name)
                if timeline is None:
                    continue
                if timeline.phase in FINAL_PHASES:
                    break
                reached = {"queued": "Queued" in timeline.reasons, "starting": timeline.admitted is not None,
                           "running": timeline.running is not None}.get(moment, True)
                if reached:
                    stop.wait(delay)
                    break
            abort(name)

        threads = [threading.Thread(target=abort_later, daemon=True,
                                    args=(name, rng.choice(["queued", "starting", "running", "delay"]),
                                          rng.uniform(0, 2)))
                   for name in random_aborts]
        for thread in threads:
            thread.start()

        names = [_name(i) for i in range(JOBS)]
        every_phase = fleet.wait(names, lambda t: t.phase is not None, "given a phase", timeout=120)
        # Kill the operator once a third of the fleet has ended: no clean shutdown, as when its node dies.
        fleet.wait(names[: JOBS // 3], lambda t: t.phase in FINAL_PHASES, "finished (first third)", timeout=900)
        operator.kill()  # SIGKILL to its container; the kubelet restarts it
        final = fleet.wait(names, lambda t: t.phase in FINAL_PHASES, "finished", timeout=1200)
        for thread in threads:
            thread.join(timeout=30)
        max_holding = fleet.max_holding

    queued = [n for n, t in every_phase.items() if "Queued" in final[n].reasons]
    assert len(queued) >= JOBS - 5 * LIMIT, f"only {len(queued)} of {JOBS} jobs were ever shown as Queued"
    assert max_holding <= LIMIT, f"{max_holding} jobs held a slot at once with a limit of {LIMIT}"

    jobs = {j["metadata"]["labels"].get("datamover.io/migrationjob"): j for j in cluster.jobs()}
    assert len(jobs) == len(cluster.jobs()), "more than one batch Job for a MigrationJob"
    aborted = set(queued_aborts) | set(random_aborts)
    wrong: list[str] = []
    for i in range(JOBS):
        name = _name(i)
        phase = final[name].phase
        expected = {f"{name}/obj-{j}.bin": hashlib.sha256(contents[f"{name}/obj-{j}.bin"]).hexdigest()
                    for j in range(OBJECTS_PER_JOB)}
        at_destination = _objects(cloud_b, dst, f"{name}/")
        if name not in aborted:
            if phase != "succeeded" or at_destination != expected:
                wrong.append(f"{name}: {phase}, {len(at_destination)} object(s) at the destination")
            continue
        if name in queued_aborts and (phase != "cancelled" or name in jobs):
            wrong.append(f"{name}: aborted while queued but ended {phase} (batch Job created: {name in jobs})")
        if phase not in ("cancelled", "aborted", "succeeded"):
            wrong.append(f"{name}: aborted but ended {phase}")
        if phase == "cancelled" and at_destination:
            wrong.append(f"{name}: cancelled yet {len(at_destination)} object(s) reached the destination")
        if any(expected.get(key) != digest for key, digest in at_destination.items()):
            wrong.append(f"{name}: an object at the destination differs from its source")
        if phase == "succeeded" and at_destination != expected:
            wrong.append(f"{name}: succeeded but the destination is incomplete")
    uploads = held_uploads(cloud_b.client(), dst)
    assert not wrong and not uploads, f"seed {seed}: {wrong[:10]} open uploads: {len(uploads)}"
