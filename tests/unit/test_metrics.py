"""The operator's /metrics: what Prometheus scrapes about jobs, read back with Prometheus' own text parser."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from datamover.controller.metrics import JobCollector


def _job(name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"destination": {"bucket": "b"}}, "status": status}


def _scrape(bodies: list[dict[str, Any]], queued: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(JobCollector(lambda: (list(bodies), queued)))
    text = generate_latest(registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_jobs_by_phase_the_queue_and_each_jobs_counters() -> None:
    samples = _scrape([
        _job("a", {"phase": "running", "workers": {
            "0": {"state": "running", "objectsTotal": 10, "objectsMigrated": 3, "objectsFailed": 1,
                  "bytesTotal": 1000, "bytesMigrated": 300, "bytesPerSecond": 50},
            "1": {"state": "succeeded", "objectsTotal": 2, "objectsSkipped": 2, "bytesTotal": 20,
                  "bytesSkipped": 20}}}),
        _job("b", {"phase": "pending", "reason": "Queued"}),
        _job("c", {"phase": "pending", "reason": "Queued"}),
        _job("d", {}),
    ], queued=2)
    assert samples[("datamover_migrationjobs", (("phase", "running"),))] == 1
    assert samples[("datamover_migrationjobs", (("phase", "pending"),))] == 2
    assert samples[("datamover_migrationjobs", (("phase", "new"),))] == 1
    assert samples[("datamover_migrationjobs", (("phase", "succeeded"),))] == 0
    assert samples[("datamover_queue_length", ())] == 2
    job = (("migrationjob", "a"), ("namespace", "ns"))
    assert samples[("datamover_job_objects_total", (*job, ("outcome", "migrated")))] == 3
    assert samples[("datamover_job_objects_total", (*job, ("outcome", "skipped")))] == 2
    assert samples[("datamover_job_objects_total", (*job, ("outcome", "failed")))] == 1
    assert samples[("datamover_job_bytes_total", (*job, ("outcome", "migrated")))] == 300
    assert samples[("datamover_job_objects_found", job)] == 12
    assert samples[("datamover_job_bytes_found", job)] == 1020
    assert samples[("datamover_job_bytes_per_second", job)] == 50
    assert samples[("datamover_job_phase", (*job, ("phase", "running")))] == 1
    # A job with no worker reports yet has a phase but no counters.
    assert ("datamover_job_objects_found", (("migrationjob", "b"), ("namespace", "ns"))) not in samples


def test_an_operator_that_follows_nothing_says_zero() -> None:
    samples = _scrape([], queued=0)
    assert samples[("datamover_queue_length", ())] == 0
    assert all(v == 0 for (name, _), v in samples.items() if name == "datamover_migrationjobs")
