"""Two operator replicas under kopf peering, as `replicaCount: 2` installs them: one acts, the other takes over when
a peer of higher priority joins or when the active one dies, and the jobs never notice. Every job ends where it
should with correct data, no job ever gets a second batch Job, the concurrency limit holds across the handovers, no
job's phase ever goes backwards (what a paused replica acting on stale memory would cause), and an abort sent while
no replica is active is not lost.

Judged from what a user sees: the MigrationJobs' status (through a watch), their Events, the batch Jobs and the
objects in the buckets. How long a handover takes (kopf's peer lifetime) is not asserted.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.controlplane.conftest import Cluster, migration_job
from tests.ground.binaries import binary
from tests.ground.fleet import FINAL_PHASES, FleetWatch, create_all
from tests.ground.stack import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, KubeCluster, OperatorProcess
from tools import render_manifests

LIMIT = 2
JOBS = 8


def _name(i: int) -> str:
    return f"ha-{i}"


def _install_peering(control_plane: KubeCluster) -> None:
    """What the chart adds for `replicaCount: 2`: kopf's peering CRD, the peering object and RBAC for it."""
    rendered = render_manifests.helm_template("--include-crds", "--set", "replicaCount=2", helm=binary("helm"))
    documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Deployment"]
    crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                          "crd/clusterkopfpeerings.kopf.dev")
    rest = [d for d in documents if d["kind"] != "CustomResourceDefinition"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rest))


@contextlib.contextmanager
def _replica(control_plane: KubeCluster, workdir: Path, name: str, priority: int) -> Iterator[OperatorProcess]:
    kubeconfig = control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT,
                                                          workdir / f"{name}.kubeconfig")
    replica = OperatorProcess(kubeconfig, workdir / f"{name}.log")
    replica.env.update({"POD_ID": name, "DATAMOVER_PEERING": "datamover", "DATAMOVER_PEERING_PRIORITY": str(priority),
                        "DATAMOVER_MAX_CONCURRENT_JOBS": str(LIMIT)})
    try:
        replica.start()
        yield replica
    finally:
        replica.stop()
        print(f"---- {name} log (tail) ----\n{replica.log_tail(40)}")


@pytest.fixture
def no_standalone_operator(operator: OperatorProcess) -> Iterator[None]:
    """The session's standalone operator steps aside while the replicas run, and comes back after."""
    operator.stop()
    yield
    operator.start()


def _reporters(cluster: Cluster) -> set[str]:
    events = client.CoreV1Api(cluster.api).list_namespaced_event(cluster.namespace).items
    return {e.reporting_instance for e in events if e.reporting_instance}


def test_replicas_hand_over_without_duplicates_lost_aborts_or_stale_writes(
        cluster: Cluster, no_standalone_operator: None, control_plane: KubeCluster, cloud_a: Any, cloud_b: Any,
        tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(10**6)
    src, dst = f"ha-src-{seed}", f"ha-dst-{seed}"
    contents: dict[str, bytes] = {}
    s3 = cloud_a.client()
    s3.create_bucket(Bucket=src)
    for i in range(JOBS + 1):
        for j in range(3):
            key = f"{_name(i)}/obj-{j}.bin"
            contents[key] = f"{key} ".encode() * (100 + 50 * j)
            s3.put_object(Bucket=src, Key=key, Body=contents[key])
    cloud_b.client().create_bucket(Bucket=dst)

    def manifest(i: int) -> dict[str, Any]:
        job = migration_job(_name(i), cloud_a, src, cloud_b, dst)
        job["spec"]["source"]["prefix"] = job["spec"]["destination"]["prefix"] = f"{_name(i)}/"
        return job

    _install_peering(control_plane)
    names = [_name(i) for i in range(JOBS)]
    with FleetWatch(cluster.api, cluster.namespace) as fleet, \
            _replica(control_plane, tmp_path, "replica-low", 100):
        create_all(cluster.api, cluster.namespace, [manifest(i) for i in range(JOBS)], fleet)
        fleet.wait(names[:1], lambda t: t.phase == "succeeded", "succeeded under the first replica", timeout=300)

        # A replica of higher priority joins: the first one pauses with its memory of every job, the new one acts.
        with _replica(control_plane, tmp_path, "replica-high", 200) as high:
            fleet.wait(names[: JOBS // 2], lambda t: t.phase in FINAL_PHASES, "finished (first half)", timeout=600)
            assert "replica-high" in _reporters(cluster), "the replica of higher priority never acted"
            # It dies with no chance to clean up; the abort and the new job come while no replica acts yet.
            high.kill()
            objects = client.CustomObjectsApi(cluster.api)
            objects.patch_namespaced_custom_object("datamover.io", "v1alpha1", cluster.namespace, "migrationjobs",
                                                   names[-1], {"spec": {"abort": True}})
            create_all(cluster.api, cluster.namespace, [manifest(JOBS)], fleet)
            final = fleet.wait([*names, _name(JOBS)], lambda t: t.phase in FINAL_PHASES, "finished", timeout=900)
        max_holding, regressions = fleet.max_holding, fleet.regressions

    assert max_holding <= LIMIT, f"{max_holding} jobs held a slot at once with a limit of {LIMIT}"
    assert not regressions, f"phases went backwards (a replica wrote from stale memory): {regressions}"
    jobs = [j.metadata.labels.get("datamover.io/migrationjob") for j in cluster.jobs()]
    assert len(jobs) == len(set(jobs)), f"a MigrationJob got more than one batch Job: {sorted(jobs)}"
    wrong = []
    for i in range(JOBS + 1):
        name = _name(i)
        at_destination = {}
        for page in cloud_b.client().get_paginator("list_objects_v2").paginate(Bucket=dst, Prefix=f"{name}/"):
            for item in page.get("Contents", []):
                body = cloud_b.client().get_object(Bucket=dst, Key=item["Key"])["Body"].read()
                at_destination[item["Key"]] = hashlib.sha256(body).hexdigest()
        expected = {k: hashlib.sha256(v).hexdigest() for k, v in contents.items() if k.startswith(f"{name}/")}
        phase = final[name].phase
        if name == names[-1]:
            # The abort landed while no replica was active: the job stopped (or had already finished) all the same.
            if phase not in ("cancelled", "aborted", "succeeded"):
                wrong.append(f"{name}: aborted but ended {phase}")
            if any(expected.get(k) != d for k, d in at_destination.items()):
                wrong.append(f"{name}: an object at the destination differs from its source")
        elif phase != "succeeded" or at_destination != expected:
            wrong.append(f"{name}: {phase}, {len(at_destination)} of {len(expected)} object(s) at the destination")
    assert not wrong, f"seed {seed}: {wrong}"
    assert not cloud_b.client().list_multipart_uploads(Bucket=dst).get("Uploads", [])
