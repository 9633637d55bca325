"""A worker's progress: the one counters type (`Progress`), the sink it goes to, and the thread-safe tracker that
throttles snapshots to the sink from whichever engine thread changed them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from datamover.backends.base import OpenUpload
from datamover.engine.fsm import ObjectState, WorkerState
from datamover.engine.janitor import UploadIntent

log = logging.getLogger("datamover.engine.progress")

# How many keys a snapshot lists per condition (the counts are always complete): status stays small.
MAX_REPORTED_KEYS = 100


@dataclass(frozen=True)
class Progress:
    """One snapshot of a worker's progress; totals grow as listing discovers keys of this shard."""

    state: WorkerState
    objects_total: int = 0
    objects_migrated: int = 0
    objects_skipped: int = 0
    objects_failed: int = 0
    bytes_total: int = 0
    bytes_migrated: int = 0
    in_flight: tuple[str, ...] = ()
    listing_done: bool = False
    objects_aborted: int = 0  # stopped by abort before anything reached the destination
    objects_retained: int = 0  # in both places: verified at the destination, but the source delete failed
    objects_excluded: int = 0  # in this shard, but not selected by spec.filter: untouched on both sides
    bytes_skipped: int = 0
    bytes_in_progress: int = 0  # bytes of parts already uploaded for large objects still in flight (liveness)
    destination_written: bool = False  # a write request (PUT, CreateMultipartUpload, CopyObject) has been started
    retained_keys: tuple[str, ...] = ()  # the first MAX_REPORTED_KEYS source keys now in both places
    objects_planned: int = 0  # plan mode: objects examined and decided (copy or identical); nothing was written
    bytes_planned: int = 0


@dataclass(frozen=True)
class Amount:
    """How many objects, and their bytes."""

    objects: int = 0
    bytes: int = 0

    def plus(self, size: int) -> Amount:
        return Amount(self.objects + 1, self.bytes + size)


@dataclass(frozen=True)
class Plan:
    """What a run would do with this worker's share of the source, and what finding it out cost."""

    copy: Amount = Amount()  # not at the destination, or different there: a run copies them
    identical: Amount = Amount()  # already at the destination, exactly: a run skips them
    delete_from_source: Amount = Amount()  # a move deletes these from the source (copied or identical)
    excluded: Amount = Amount()  # left out by spec.filter: a run does not touch them
    by_mechanism: Mapping[str, Amount] = field(default_factory=dict)  # `copy`, split by how it would be copied
    run_requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # side -> kind -> count
    plan_requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # what the plan itself sent


class ProgressSink(Protocol):
    """Where progress goes. Called from engine threads: implementations must be thread-safe and quick. Every
    method does nothing unless a sink overrides it, so `NullSink` is the protocol itself."""

    def on_progress(self, progress: Progress) -> None:
        return None

    def on_upload_intent(self, intent: UploadIntent) -> None:
        """Durably record the intent before the upload is created; raise if it cannot be recorded (the engine then
        does not create the upload and that object fails as a transient error)."""
        return None

    def on_intent_cleared(self, intent: UploadIntent) -> None:
        """No upload of ours is left on intent.key (completed or aborted, and confirmed by listing): forget it."""
        return None

    def on_upload_opened(self, upload: OpenUpload) -> None:
        return None

    def on_upload_closed(self, upload: OpenUpload) -> None:
        return None


class NullSink(ProgressSink):
    """A sink that drops everything (handy in scripts)."""


class ProgressTracker:
    """Thread-safe counters plus the throttle: at most one snapshot per interval, and a forced final one."""

    def __init__(self, sink: ProgressSink, interval: float, state: WorkerState) -> None:
        self._sink = sink
        self._interval = interval
        self._lock = threading.Lock()
        self._last_emit = 0.0
        self._state = state
        self._objects_total = 0
        self._objects_excluded = 0
        self._bytes_total = 0
        self._counts: dict[ObjectState, int] = {}
        self._bytes_migrated = 0
        self._bytes_skipped = 0
        self._bytes_in_progress = 0
        self._in_flight: dict[str, None] = {}  # insertion-ordered set of keys being worked on
        self._listing_done = False
        self._destination_written = False
        self._retained_keys: list[str] = []
        self._planned = (0, 0)

    def snapshot(self) -> Progress:
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> Progress:
        return Progress(
            state=self._state,
            objects_total=self._objects_total,
            objects_migrated=self._counts.get(ObjectState.MIGRATED, 0),
            objects_skipped=self._counts.get(ObjectState.SKIPPED, 0),
            objects_failed=self._counts.get(ObjectState.FAILED, 0),
            bytes_total=self._bytes_total,
            bytes_migrated=self._bytes_migrated,
            in_flight=tuple(self._in_flight),
            listing_done=self._listing_done,
            objects_aborted=self._counts.get(ObjectState.ABORTED, 0),
            objects_retained=self._counts.get(ObjectState.RETAINED, 0),
            objects_excluded=self._objects_excluded,
            bytes_skipped=self._bytes_skipped,
            bytes_in_progress=self._bytes_in_progress,
            destination_written=self._destination_written,
            retained_keys=tuple(self._retained_keys),
            objects_planned=self._planned[0],
            bytes_planned=self._planned[1],
        )

    def _changed(self, force: bool = False) -> None:
        # Called with the lock held; the sink is called outside it so a slow sink never blocks counting.
        now = time.monotonic()
        if not force and now - self._last_emit < self._interval:
            return
        self._last_emit = now
        snapshot = self._snapshot_locked()
        self._lock.release()
        try:
            self._sink.on_progress(snapshot)
        except Exception:
            # A sink that fails to forward progress must not stop a migration; the final snapshot is retried.
            log.exception("event=progress_sink_failed")
        finally:
            self._lock.acquire()

    def set_state(self, state: WorkerState) -> None:
        with self._lock:
            self._state = state
            self._changed(force=True)

    def discovered(self, size: int) -> None:
        with self._lock:
            self._objects_total += 1
            self._bytes_total += size
            self._changed()

    def excluded(self) -> None:
        with self._lock:
            self._objects_excluded += 1
            self._changed()

    def listing_done(self) -> None:
        with self._lock:
            self._listing_done = True
            self._changed()

    def destination_written(self) -> None:
        """The first write request to the destination is about to start: told at once (not throttled)."""
        with self._lock:
            if self._destination_written:
                return
            self._destination_written = True
            self._changed(force=True)

    def started(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] = None
            self._changed()

    def part_done(self, size: int) -> None:
        """A part of a large object is at the destination (not yet verified): progress a caller can show."""
        with self._lock:
            self._bytes_in_progress += size
            self._changed()

    def finished(self, key: str, state: ObjectState, size: int, parts_bytes: int = 0) -> None:
        with self._lock:
            self._bytes_in_progress -= parts_bytes
            self._in_flight.pop(key, None)
            self._counts[state] = self._counts.get(state, 0) + 1
            if state is ObjectState.MIGRATED:
                self._bytes_migrated += size
            elif state is ObjectState.SKIPPED:
                self._bytes_skipped += size
            elif state is ObjectState.RETAINED and len(self._retained_keys) < MAX_REPORTED_KEYS:
                self._retained_keys.append(key)
            self._changed()

    def planned(self, size: int) -> None:
        """Plan mode: one object examined and decided."""
        with self._lock:
            self._planned = (self._planned[0] + 1, self._planned[1] + size)
            self._changed()

    def final(self) -> Progress:
        with self._lock:
            self._changed(force=True)
            return self._snapshot_locked()
