"""`datamover-operator`: runs the kopf handlers against the current kubeconfig, or in-cluster."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import socket
from typing import Any

import kopf

from datamover import kubeapi
from datamover.api import FINALIZER, HEARTBEAT_SECONDS, HEARTBEAT_TIMEOUT_SECONDS
from datamover.controller import (
    handlers,  # importing it registers the handlers with kopf
    metrics,
    plans,  # noqa: F401  # the MigrationPlan handlers: registered with kopf by the import, like handlers
)
from datamover.controller.peering import PeeringObject


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf's own bookkeeping goes to status, never to annotations, so GitOps tools see no drift on metadata.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    # Only warnings become Events from kopf's own log; our phase Events are posted explicitly. (At INFO, kopf would
    # post an Event for every handled watch event: an API request each.)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's own connection, from the configuration our requests use (kubeapi.load_config).

    Without it kopf would log in through pykube-ng by itself, which looks for a service account first, reads one
    kubeconfig file only, and writes inline certificate data where anyone can read it. kopf calls this again after a
    401, which picks up a rotated service account token.
    """
    client = kubeapi.shared()
    cluster, user = client.config.cluster, client.config.user

    def path(value: Any) -> str | None:  # pykube-ng's BytesOrFile: a file by now (kubeapi wrote inline data out)
        return str(value.filename()) if value is not None else None

    return kopf.ConnectionInfo(
        server=client.server,
        ca_path=path(cluster.get("certificate-authority")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        username=user.get("username"),
        password=user.get("password"),
        token=client.bearer_token(),
        certificate_path=path(user.get("client-certificate")),
        private_key_path=path(user.get("client-key")),
        default_namespace=kubeapi.context_namespace(client.config),
        proxy_url=cluster.get("proxy-url"),
        trust_env=settings.networking.trust_env,
    )


class _QuietRoutine(logging.Filter):
    """kopf logs every handler run; the indexers and event handlers run on every watch event and say nothing."""

    ROUTINE = re.compile(r"^Handler '(\w+_index|\w+_event)' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.ROUTINE.match(record.getMessage())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="datamover-operator", description=__doc__)
    parser.add_argument(
        "--namespace", "-n", action="append", default=None,
        help="namespace to watch (repeatable); default: $DATAMOVER_NAMESPACES (comma-separated), else all",
    )
    parser.add_argument(
        "--peering", default=os.environ.get("DATAMOVER_PEERING") or None,
        help="kopf peering object name, so that only one of several replicas is active; default: standalone",
    )
    parser.add_argument(
        "--priority", type=int, default=int(os.environ.get("DATAMOVER_PEERING_PRIORITY") or 0) or None,
        help="kopf peering priority; with --peering the default is a random one per process",
    )
    parser.add_argument(
        "--max-concurrent-jobs", type=int,
        default=int(os.environ.get("DATAMOVER_MAX_CONCURRENT_JOBS") or handlers.DEFAULT_MAX_CONCURRENT_JOBS),
        help="MigrationJobs whose workers run at once; the rest wait, pending and Queued, in creation order "
             f"(0 = no limit); default: $DATAMOVER_MAX_CONCURRENT_JOBS, else {handlers.DEFAULT_MAX_CONCURRENT_JOBS}",
    )
    parser.add_argument(
        "--worker-heartbeat-timeout", type=float,
        default=float(os.environ.get("DATAMOVER_WORKER_HEARTBEAT_TIMEOUT") or HEARTBEAT_TIMEOUT_SECONDS),
        help="seconds a running worker may go without reporting before the operator takes it for frozen and "
             "restarts its pod (workers report at least every 10 s); default: $DATAMOVER_WORKER_HEARTBEAT_TIMEOUT, "
             f"else {HEARTBEAT_TIMEOUT_SECONDS:.0f}",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("DATAMOVER_METRICS_PORT") or 0),
        help="serve Prometheus metrics on this port at /metrics (0 = off); default: $DATAMOVER_METRICS_PORT, else 0",
    )
    parser.add_argument(
        "--metrics-address", default=os.environ.get("DATAMOVER_METRICS_ADDRESS") or "0.0.0.0",
        help="address the metrics endpoint listens on; default: $DATAMOVER_METRICS_ADDRESS, else 0.0.0.0",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    namespaces = args.namespace or [n for n in os.environ.get("DATAMOVER_NAMESPACES", "").split(",") if n]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietRoutine())
    if args.max_concurrent_jobs < 0:
        parser.error("--max-concurrent-jobs must be 0 (no limit) or more")
    if args.worker_heartbeat_timeout < 2 * HEARTBEAT_SECONDS:
        parser.error(f"--worker-heartbeat-timeout must be at least {2 * HEARTBEAT_SECONDS:.0f} (two heartbeats)")
    if not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be a port number, or 0 for no metrics endpoint")
    handlers.CONTROLLER.max_concurrent_jobs = args.max_concurrent_jobs
    handlers.CONTROLLER.heartbeat_timeout = args.worker_heartbeat_timeout
    try:
        kubeapi.shared()  # KUBECONFIG, else ~/.kube/config, else in-cluster: said now rather than at kopf's login
    except kubeapi.ConfigError as error:
        parser.exit(2, f"datamover-operator: {error}\n")
    priority = args.priority
    if args.peering is not None and priority is None:
        # kopf pauses every peer that shares the highest priority; distinct random ones leave exactly one replica
        # active, and the next one takes over when its heartbeat stops.
        priority = random.randint(1, 2**31 - 1)
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address, handlers.CONTROLLER.snapshot)
    identity = replica_identity()
    if args.peering is not None:
        handlers.CONTROLLER.peering = tuple(PeeringObject(args.peering, ns) for ns in namespaces) or (
            PeeringObject(args.peering),)
        handlers.CONTROLLER.identity, handlers.CONTROLLER.priority = identity, priority or 0
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str that kopf does not export
        liveness_endpoint=os.environ.get("DATAMOVER_LIVENESS_ENDPOINT") or None,
    )


def replica_identity() -> str:
    """This replica's name among peers: the pod's name (the chart sets POD_ID), else host and process.

    Given to kopf explicitly: kopf's own default asks the password database for the user's name, which fails for a
    uid with no passwd entry (the image runs as 65532 and has none).
    """
    return os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}"


if __name__ == "__main__":
    main()
