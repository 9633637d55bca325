"""The operator's Prometheus metrics: jobs by phase, the queue, reconciles, and each job's progress.

Workers are short-lived pods that Prometheus may never scrape, so their figures reach Prometheus through the operator:
it already holds every MigrationJob (with the counters each worker reports into status) in kopf's index, and renders
them at scrape time. Nothing is kept twice and nothing is lost when a worker pod ends; a job's series go away when the
MigrationJob does. The workers' counters only grow within a job, so they are exported as counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from datamover.api import MigrationStatus, Phase, progress_status

REGISTRY = CollectorRegistry()

RECONCILE_SECONDS = Histogram(
    "datamover_reconcile_duration_seconds", "Time one reconcile step of one MigrationJob took (API requests included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=REGISTRY)
QUEUE_WAIT_SECONDS = Histogram(
    "datamover_reconcile_queue_wait_seconds", "Time a MigrationJob waited in the operator's work queue for a "
    "reconciler, by whether it was urgent (a new job, or one a freed slot admits).", ["urgent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=REGISTRY)
RECONCILE_ERRORS = CounterMetric(
    "datamover_reconcile_errors", "Reconcile steps that failed and were retried, by kind (api: the API server "
    "refused or failed a request; bug: anything else).", ["kind"], registry=REGISTRY)

# Workers' counters, as status.progress names them, exported per job.
OBJECT_COUNTERS = {"migrated": "objectsMigrated", "skipped": "objectsSkipped", "failed": "objectsFailed",
                   "excluded": "objectsExcluded", "retained": "objectsRetained"}
BYTE_COUNTERS = {"migrated": "bytesMigrated", "skipped": "bytesSkipped"}
# A job that has no status yet shows as this phase.
NO_PHASE = "new"

# The MigrationJobs as last seen, and how many wait for a slot; taken on the operator's event loop (the only thread
# that may read kopf's indices), from the scrape's thread.
Snapshot = Callable[[], tuple[list[Mapping[str, Any]], int]]


class JobCollector(Collector):
    """Renders the MigrationJobs the operator follows at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        bodies, queued = self._snapshot()
        by_phase: Counter[str] = Counter({p.value: 0 for p in Phase})
        objects = CounterMetricFamily("datamover_job_objects", "Objects of the job by what happened to them, "
                                      "summed over its workers.", labels=["namespace", "migrationjob", "outcome"])
        data = CounterMetricFamily("datamover_job_bytes", "Bytes of the job migrated, or skipped as already "
                                   "identical, summed over its workers.", labels=["namespace", "migrationjob",
                                                                                 "outcome"])
        totals = GaugeMetricFamily("datamover_job_objects_found", "Objects the job's workers have listed so far "
                                   "(grows while listing runs).", labels=["namespace", "migrationjob"])
        total_bytes = GaugeMetricFamily("datamover_job_bytes_found", "Bytes of the objects listed so far.",
                                        labels=["namespace", "migrationjob"])
        rate = GaugeMetricFamily("datamover_job_bytes_per_second", "The job's current rate of work done, smoothed "
                                 "by its workers.", labels=["namespace", "migrationjob"])
        phase_info = GaugeMetricFamily("datamover_job_phase", "1 for the job's current phase.",
                                       labels=["namespace", "migrationjob", "phase"])
        for body in bodies:
            meta = body.get("metadata") or {}
            job = [str(meta.get("namespace")), str(meta.get("name"))]
            status = MigrationStatus.of(body)
            phase = status.phase.value if status.phase else NO_PHASE
            by_phase[phase] += 1
            phase_info.add_metric([*job, phase], 1)
            if not status.workers:
                continue
            progress = progress_status(status.workers)
            for outcome, name in OBJECT_COUNTERS.items():
                objects.add_metric([*job, outcome], progress[name])
            for outcome, name in BYTE_COUNTERS.items():
                data.add_metric([*job, outcome], progress[name])
            totals.add_metric(job, progress["objectsTotal"])
            total_bytes.add_metric(job, progress["bytesTotal"])
            rate.add_metric(job, progress["bytesPerSecond"])
        jobs = GaugeMetricFamily("datamover_migrationjobs", "MigrationJobs the operator follows, by phase "
                                 f"({NO_PHASE!r}: not answered yet).", labels=["phase"])
        for phase, count in sorted(by_phase.items()):
            jobs.add_metric([phase], count)
        yield jobs
        yield GaugeMetricFamily("datamover_queue_length", "MigrationJobs pending in the queue, waiting for a slot "
                                "under --max-concurrent-jobs.", value=queued)
        yield from (phase_info, objects, data, totals, total_bytes, rate)


def serve(port: int, address: str, snapshot: Snapshot) -> None:
    """Register the job collector and serve /metrics on `address`:`port` from a daemon thread."""
    REGISTRY.register(JobCollector(snapshot))
    start_http_server(port, addr=address, registry=REGISTRY)
