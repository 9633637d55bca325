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
import copy
import hashlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from datamover import kubeapi
from tests.controlplane.conftest import Cluster, migration_job
from tests.ground.binaries import binary
from tests.ground.checker import held_uploads
from tests.ground.fleet import FINAL_PHASES, FleetWatch, create_all
from tests.ground.node import Node
from tests.ground.stack import OPERATOR_NAMESPACE, KubeCluster, OperatorRelease, ground_values, operator_healthy
from tools import render_manifests

LIMIT = 2
JOBS = 8
READY_TIMEOUT = 300.0


def _name(i: int) -> str:
    return f"ha-{i}"


def _render_replicas() -> list[dict[str, Any]]:
    rendered = render_manifests.helm_template("--include-crds", "--set", "replicaCount=2", *ground_values(),
                                              helm=binary("helm"))
    return [d for d in yaml.safe_load_all(rendered) if d]


def _install_peering(control_plane: KubeCluster, documents: list[dict[str, Any]]) -> None:
    """What the chart adds for `replicaCount: 2`: kopf's peering CRD, the peering object and RBAC for it."""
    documents = [d for d in documents if d["kind"] != "Deployment"]
    crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(crds))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                          "crd/clusterkopfpeerings.kopf.dev")
    rest = [d for d in documents if d["kind"] != "CustomResourceDefinition"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rest))


@dataclass
class Replica:
    """One operator replica: a pod of the chart's `replicaCount: 2` template with a peering priority of its own."""

    name: str
    control_plane: KubeCluster
    node: Node | None

    def get(self) -> dict[str, Any]:
        return dict(json.loads(self.control_plane.kubectl("get", "pod", self.name, "-n", OPERATOR_NAMESPACE,
                                                          "-o", "json").stdout))

    def kill(self) -> None:
        """It dies with no chance to clean up (SIGKILL through the node's containerd; a forced delete elsewhere)."""
        if self.node is None:
            self.control_plane.kubectl("delete", "pod", self.name, "-n", OPERATOR_NAMESPACE, "--grace-period=0",
                                       "--force", "--wait=false")
            return
        (status,) = self.get()["status"]["containerStatuses"]
        self.node.signal_container(status["containerID"], "SIGKILL")


@contextlib.contextmanager
def _replica(control_plane: KubeCluster, node: Node | None, template: dict[str, Any], name: str,
             priority: int) -> Iterator[Replica]:
    """The chart's operator pod template run as a bare pod named `name` (kopf's peering id is the pod's name), with
    `priority` and the concurrency limit, and restartPolicy Never so that a killed replica stays dead."""
    spec = copy.deepcopy(template["spec"])
    spec["restartPolicy"] = "Never"
    (container,) = spec["containers"]
    container["env"] = [e for e in container["env"] if e["name"] != "DATAMOVER_MAX_CONCURRENT_JOBS"] + [
        {"name": "DATAMOVER_MAX_CONCURRENT_JOBS", "value": str(LIMIT)},
        {"name": "DATAMOVER_PEERING_PRIORITY", "value": str(priority)}]
    # Labels of its own: the chart's selector labels would let the (scaled-down) ReplicaSet adopt and delete it.
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
           "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE, "labels": {"datamover.test/replica": name}}}
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    replica = Replica(name, control_plane, node)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not operator_healthy(replica.get(), node):
            assert time.monotonic() < deadline, f"replica {name} not healthy after {READY_TIMEOUT:.0f}s"
            time.sleep(0.3)
        yield replica
    finally:
        logs = control_plane.kubectl("logs", "-n", OPERATOR_NAMESPACE, name, "--tail=40", check=False)
        print(f"---- {name} log (tail) ----\n{logs.stdout}{logs.stderr}")
        control_plane.kubectl("delete", "pod", name, "-n", OPERATOR_NAMESPACE, "--wait=true", "--timeout=120s",
                              check=False)


@pytest.fixture
def no_standalone_operator(operator: OperatorRelease) -> Iterator[None]:
    """The session's standalone operator steps aside (its Deployment scaled to 0) while the replicas run."""
    operator.scale(0)
    yield
    operator.scale(1)


def _reporters(cluster: Cluster) -> set[str]:
    events = cluster.api.list(kubeapi.EVENTS, cluster.namespace)["items"]
    return {e["reportingInstance"] for e in events if e.get("reportingInstance")}


def test_replicas_hand_over_without_duplicates_lost_aborts_or_stale_writes(
        cluster: Cluster, no_standalone_operator: None, control_plane: KubeCluster, node: Node | None, cloud_a: Any,
        cloud_b: Any) -> None:
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

    documents = _render_replicas()
    _install_peering(control_plane, documents)
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    names = [_name(i) for i in range(JOBS)]
    with FleetWatch(cluster.api, cluster.namespace) as fleet, \
            _replica(control_plane, node, template, "replica-low", 100):
        create_all(cluster.api, cluster.namespace, [manifest(i) for i in range(JOBS)], fleet)
        fleet.wait(names[:1], lambda t: t.phase == "succeeded", "succeeded under the first replica", timeout=300)

        # A replica of higher priority joins: the first one pauses with its memory of every job, the new one acts.
        with _replica(control_plane, node, template, "replica-high", 200) as high:
            fleet.wait(names[: JOBS // 2], lambda t: t.phase in FINAL_PHASES, "finished (first half)", timeout=600)
            # On a fast node the first replica may finish the first half before it sees the new one and pauses:
            # the new one's first act is then on the second half.
            deadline = time.monotonic() + 300
            while "replica-high" not in _reporters(cluster):
                assert time.monotonic() < deadline, "the replica of higher priority never acted"
                time.sleep(0.5)
            # It dies with no chance to clean up; the abort and the new job come while no replica acts yet.
            high.kill()
            try:
                cluster.api.patch(kubeapi.MIGRATION_JOBS, cluster.namespace, names[-1], {"spec": {"abort": True}})
            except kubeapi.ApiError as error:
                # Too late is an answer too (on a fast node the last job can end first): the API server refuses.
                if error.status != 422 or "already ended" not in error.body:
                    raise
            create_all(cluster.api, cluster.namespace, [manifest(JOBS)], fleet)
            final = fleet.wait([*names, _name(JOBS)], lambda t: t.phase in FINAL_PHASES, "finished", timeout=900)
        max_holding, regressions = fleet.max_holding, fleet.regressions

    assert max_holding <= LIMIT, f"{max_holding} jobs held a slot at once with a limit of {LIMIT}"
    assert not regressions, f"phases went backwards (a replica wrote from stale memory): {regressions}"
    jobs = [j["metadata"]["labels"].get("datamover.io/migrationjob") for j in cluster.jobs()]
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
    assert not held_uploads(cloud_b.client(), dst)
