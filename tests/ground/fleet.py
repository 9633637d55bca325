"""Many MigrationJobs at once, and a watch that records what a user would see of each of them.

The operator-scale test and bench/operator_scale.py share it: one creates a fleet and judges it, the other times it.
Times are this process's monotonic clock at the moment a watch event arrived, so they include the watch's own delay
(never less than what a user watching would see).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from datamover import kubeapi

FINAL_PHASES = frozenset({"succeeded", "failed", "aborted", "cancelled"})
# Phases only move forward: pending, then running, then aborting, then a final one (any step may be skipped).
PHASE_RANK = {"pending": 0, "running": 1, "aborting": 2, **dict.fromkeys(FINAL_PHASES, 3)}


def holds_slot(status: dict[str, Any]) -> bool:
    """Whether a job is using one of the operator's concurrency slots, judged from its status alone."""
    phase = status.get("phase")
    return phase in ("running", "aborting") or (phase == "pending" and status.get("reason") == "WorkersStarting")


@dataclasses.dataclass
class Timeline:
    """What the watch saw of one MigrationJob."""

    created: float  # when its create request returned
    first_status: float | None = None
    admitted: float | None = None  # first seen holding a slot
    running: float | None = None
    final: float | None = None
    phase: str | None = None
    reasons: set[str] = dataclasses.field(default_factory=set)
    status: dict[str, Any] = dataclasses.field(default_factory=dict)


class FleetWatch:
    """Follows every MigrationJob of one namespace from a watch stream; thread-safe readers."""

    def __init__(self, api: kubeapi.Client, namespace: str) -> None:
        self._api = api
        self.namespace = namespace
        self.timelines: dict[str, Timeline] = {}
        self.max_holding = 0
        self._holding: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-watch", daemon=True)
        self.errors: list[str] = []
        self.regressions: list[str] = []  # a phase seen after a later one: status written from stale memory

    def __enter__(self) -> FleetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def created(self, name: str, when: float) -> None:
        with self._lock:
            timeline = self.timelines.setdefault(name, Timeline(created=when))
            timeline.created = min(timeline.created, when)

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                stream = self._api.watch(kubeapi.MIGRATION_JOBS, self.namespace,
                                         resource_version=resource_version or None, timeout_seconds=5, bookmarks=True)
                for event in stream:
                    obj = event["object"]
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(obj, time.monotonic())
                    if self._stop.is_set():
                        break
            except kubeapi.ApiError as error:
                if error.status == 410:  # our resource version is too old: start from now
                    resource_version = ""
                    continue
                self.errors.append(f"watch: {error.status} {error.reason}")
                time.sleep(0.5)
            except Exception as error:  # a dropped connection: watch again from where we were
                self.errors.append(f"watch: {error!r}")
                time.sleep(0.5)

    def _seen(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = dict(obj.get("status") or {})
        with self._lock:
            timeline = self.timelines.setdefault(name, Timeline(created=now))
            timeline.status = status
            phase = status.get("phase")
            if phase and timeline.first_status is None:
                timeline.first_status = now
            if status.get("reason"):
                timeline.reasons.add(str(status["reason"]))
            before = timeline.phase
            if before and (PHASE_RANK.get(str(phase), -1) < PHASE_RANK.get(before, 0)
                           or (before in FINAL_PHASES and phase != before)):
                self.regressions.append(f"{name}: {before} -> {phase}")
            timeline.phase = phase
            if holds_slot(status):
                if timeline.admitted is None:
                    timeline.admitted = now
                self._holding.add(name)
            else:
                self._holding.discard(name)
            self.max_holding = max(self.max_holding, len(self._holding))
            if phase == "running" and timeline.running is None:
                timeline.running = now
            if phase in FINAL_PHASES and timeline.final is None:
                timeline.final = now

    def snapshot(self) -> dict[str, Timeline]:
        with self._lock:
            return {name: dataclasses.replace(t, reasons=set(t.reasons), status=dict(t.status))
                    for name, t in self.timelines.items()}

    def wait(self, names: Iterable[str], predicate: Any, what: str, timeout: float) -> dict[str, Timeline]:
        """Wait until predicate(timeline) holds for every name; fail naming the jobs that never got there."""
        names = list(names)
        deadline = time.monotonic() + timeout
        while True:
            timelines = self.snapshot()
            missing = [n for n in names if n not in timelines or not predicate(timelines[n])]
            if not missing:
                return timelines
            if time.monotonic() > deadline:
                sample = {n: (timelines[n].phase, sorted(timelines[n].reasons)) if n in timelines else None
                          for n in missing[:5]}
                raise AssertionError(f"{len(missing)} of {len(names)} MigrationJobs not {what} after {timeout:.0f}s; "
                                     f"e.g. {json.dumps(sample)}; watch errors: {self.errors[-3:]}")
            time.sleep(0.2)


def create_all(api: kubeapi.Client, namespace: str, manifests: list[dict[str, Any]],
               fleet: FleetWatch, threads: int = 8) -> None:
    """Create the MigrationJobs in order, several requests in flight (as a script or ApplicationSet would)."""

    def create(manifest: dict[str, Any]) -> None:
        api.create(kubeapi.MIGRATION_JOBS, namespace, manifest)
        fleet.created(manifest["metadata"]["name"], time.monotonic())

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(create, m) for m in manifests]:
            future.result()


def count_requests(audit_log: Path, start: float | None = None, end: float | None = None) -> dict[str, int]:
    """Requests in the API server's audit log, by verb/resource, optionally only those received in [start, end)
    (wall-clock epoch seconds)."""
    counts: dict[str, int] = {}
    if not audit_log.exists():
        return counts
    for line in audit_log.read_text().splitlines():
        try:
            event = cast(dict[str, Any], json.loads(line))
        except ValueError:
            continue
        received = _epoch(event.get("requestReceivedTimestamp", ""))
        if (start is not None and received < start) or (end is not None and received >= end):
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = f"{event.get('verb')} {resource}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _epoch(timestamp: str) -> float:
    try:
        return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
