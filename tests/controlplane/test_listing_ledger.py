"""The listing ledger in status.listing on the real API server, written with the worker's own Role: compare-and-swap
holds while workers claim pages concurrently and status.workers is patched around them."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import yaml

from datamover import kubeapi
from datamover.api import GROUP, VERSION
from datamover.controller import resources
from datamover.engine import AbortSignal
from datamover.engine.shards import KeyRange, SharedListing
from datamover.worker.ledger import StatusLedgerStore
from tests.ground.controlplane import ControlPlane
from tests.ground.plugin_controlplane import Kubectl
from tests.synthetic import SyntheticStore

pytestmark = pytest.mark.ground
CRD = Path(__file__).resolve().parents[2] / "crds" / "datamover.io_migrationjobs.yaml"


def _never() -> bool:
    return False


def test_workers_share_one_listing_through_status_with_their_own_role(
    control_plane: ControlPlane, kubectl: Kubectl, admin_api: kubeapi.Client, tmp_path: Path,
) -> None:
    # The CRD only (as the chart installs it): the workers' Role and status patches are what is under test.
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/migrationjobs.datamover.io")
    namespace, name = f"ledger-{uuid.uuid4().hex[:8]}", "split"
    kubectl("create", "namespace", namespace)
    location = {"bucket": "b", "endpoint": "http://127.0.0.1:9", "region": "us-east-1",
                "credentialsSecretRef": {"name": "none"}}
    owner = admin_api.create(kubeapi.MIGRATION_JOBS, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MigrationJob", "metadata": {"name": name},
        "spec": {"source": location, "destination": {**location, "bucket": "c"}, "parallelism": 4}})
    for manifest in (resources.service_account(owner), resources.role(owner), resources.role_binding(owner)):
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    kubeconfig = control_plane.service_account_kubeconfig(namespace, resources.child_name(name),
                                                          tmp_path / "worker.kubeconfig")
    worker_api = kubeapi.Client(kubeapi.load_config(str(kubeconfig)))

    count, page, workers = 1200, 40, 4
    source = SyntheticStore("src", "", count, page_size=page)
    claimed: list[list[KeyRange]] = [[] for _ in range(workers)]
    keys: list[list[str]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    stop_churn = threading.Event()

    def claim_all(index: int) -> None:
        try:
            listing = SharedListing(StatusLedgerStore(worker_api, namespace, name), index, 60.0, f"{index}/4")
            while (claim := listing.claim(source, AbortSignal(), _never)) is not None:
                claimed[index].append(claim.range)
                keys[index].extend(summary.key for summary in claim.objects)
                listing.close(claim.range)
            listing.flush()
        except BaseException as error:
            errors.append(RuntimeError(str(getattr(error, "body", error))[-700:]))

    def churn() -> None:
        # What the reporters and the operator do meanwhile: merge patches of other status fields.
        beat = 0
        while not stop_churn.is_set():
            beat += 1
            worker_api.patch(kubeapi.MIGRATION_JOBS, namespace, name,
                             {"status": {"workers": {"0": {"state": "running", "beat": beat}}}},
                             content_type=kubeapi.MERGE_PATCH, subresource="status")

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=claim_all, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop_churn.set()
    churner.join()

    assert not errors, errors
    every = sorted(key for part in keys for key in part)
    assert every == [f"k{i:08d}" for i in range(count)]  # each key claimed by exactly one worker
    assert source.requests["ListObjectsV2"] == count // page  # each page listed once
    status = admin_api.get(kubeapi.MIGRATION_JOBS, namespace, name)["status"]
    assert status["listing"]["finished"] and status["listing"]["open"] == {}
    assert status["listing"]["pages"] == count // page and status["workers"]["0"]["beat"] > 0
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)
