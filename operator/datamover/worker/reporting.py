"""Turns the engine's progress into merge patches of status.workers[<index>], throttled so the API server is spared.

A patch goes out at most every THROTTLE_SECONDS for counters, but at once on a state change, on the first write to
the destination, and whenever a multipart upload is intended, opened or closed; and at least every HEARTBEAT_SECONDS
while the worker runs, progress or not. An upload intent is a *required*
patch: the engine creates the upload only once the intent is in status, so a successor or the operator's janitor
finds every upload of ours by listing the intended keys, even one whose ID was never recorded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from datamover import kubeapi
from datamover.api import HEARTBEAT_SECONDS, WorkerReport, now_rfc3339
from datamover.engine import OpenUpload, Plan, Progress, UploadIntent, WorkerState

log = logging.getLogger("datamover.worker")

THROTTLE_SECONDS = 2.0
# The rates in a report are smoothed over about this long: a burst or a pause moves them gradually, as users of a
# progress bar expect, while a real change shows within a few reports.
RATE_WINDOW_SECONDS = 10.0
REQUIRED_PATCH_ATTEMPTS = 10


@dataclass
class RateMeter:
    """Smoothed rate of a growing count (an exponentially weighted mean whose weight decays over `window` seconds,
    so that samples taken at irregular intervals weigh by the time they cover)."""

    window: float = RATE_WINDOW_SECONDS
    rate: float = 0.0
    _at: float | None = None
    _count: float = 0.0

    def update(self, now: float, count: float) -> float:
        if self._at is None:
            self._at, self._count = now, count
            return self.rate
        elapsed = now - self._at
        if elapsed <= 0:
            return self.rate
        # A count that shrinks (an aborted object's parts no longer in flight) is no negative work.
        sample = max(0.0, count - self._count) / elapsed
        weight = 1.0 - math.exp(-elapsed / self.window)
        self.rate += weight * (sample - self.rate)
        self._at, self._count = now, count
        return self.rate


class IntentNotRecorded(RuntimeError):
    """The upload intent could not be written to status: the engine must not create the upload."""


class StatusReporter:
    """The engine's ProgressSink for one worker; thread-safe (engine threads call it concurrently)."""

    def __init__(self, api: kubeapi.Client, namespace: str, name: str, index: int, pod: str,
                 still_open: Iterable[OpenUpload] = (), still_intended: Iterable[UploadIntent] = ()) -> None:
        self._api, self._namespace, self._name, self._index, self._pod = api, namespace, name, index, pod
        self._lock = threading.Lock()
        self._state = WorkerState.PENDING
        self._progress: Progress | None = None
        # Uploads an earlier attempt left that could not be aborted yet stay recorded for the operator's janitor.
        self._uploads: dict[tuple[str, str], OpenUpload] = {(u.key, u.upload_id): u for u in still_open}
        # Intents (one per key, the earliest `since`) an earlier attempt left unresolved, and this attempt's.
        self._intents: dict[str, UploadIntent] = {i.key: i for i in still_intended}
        self._sent_at = 0.0
        self._message = ""
        self._reason = ""
        self._bytes_rate = RateMeter()
        self._objects_rate = RateMeter()
        self._done: tuple[int, int] = (0, 0)
        self._last_progress = ""
        self._plan: Plan | None = None

    def start(self, *, aborting: bool) -> None:
        with self._lock:
            self._state = WorkerState.ABORTING if aborting else WorkerState.RUNNING
            self._send()

    def on_progress(self, progress: Progress) -> None:
        with self._lock:
            # Only finish() reports a final state (a required patch): an engine that has drained its abort is still
            # aborting until then.
            aborting = progress.state in (WorkerState.ABORTING, WorkerState.ABORTED)
            state = WorkerState.ABORTING if aborting else self._state
            changed, self._state = state is not self._state, state
            previous, self._progress = self._progress, progress
            first_write = progress.destination_written and not (previous and previous.destination_written)
            if changed or first_write or time.monotonic() - self._sent_at >= THROTTLE_SECONDS:
                self._send()

    def on_upload_intent(self, intent: UploadIntent) -> None:
        with self._lock:
            key = intent.key
            before = self._intents.get(key)
            if before is None or intent.since < before.since:
                self._intents[key] = intent
            if not self._send(required=True):
                # Not in status: forget it and refuse, so the engine does not create the upload.
                if before is None:
                    self._intents.pop(key, None)
                else:
                    self._intents[key] = before
                raise IntentNotRecorded(f"upload intent for key {key!r} could not be recorded in status")

    def on_intent_cleared(self, intent: UploadIntent) -> None:
        with self._lock:
            recorded = self._intents.get(intent.key)
            # An older intent on the same key (an earlier attempt's) covers uploads the engine's cleanup did not
            # look for: keep that one for the successor or the janitor.
            if recorded is not None and recorded.since.replace(microsecond=0) >= intent.since.replace(microsecond=0):
                del self._intents[intent.key]
                self._send(required=True)

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self._lock:
            self._uploads[(upload.key, upload.upload_id)] = upload
            self._send(required=True)

    def on_upload_closed(self, upload: OpenUpload) -> None:
        with self._lock:
            self._uploads.pop((upload.key, upload.upload_id), None)
            self._send(required=True)

    def beat(self) -> None:
        """Report even when nothing moved (a long listing, one slow part), so that the operator can tell a slow
        worker from a frozen one."""
        with self._lock:
            if not self._state.final and time.monotonic() - self._sent_at >= HEARTBEAT_SECONDS:
                self._send()

    def finish(self, state: WorkerState, progress: Progress, message: str, reason: str = "",
               plan: Plan | None = None) -> None:
        """The final report; in plan mode it carries the plan (the operator sums the workers' into status.plan)."""
        with self._lock:
            self._state, self._progress, self._message, self._reason = state, progress, message, reason
            self._plan = plan
            self._send(required=True)

    def _report(self) -> WorkerReport:
        progress = self._progress or Progress(self._state)
        done = (progress.bytes_migrated + progress.bytes_skipped + progress.bytes_in_progress + progress.bytes_planned,
                progress.objects_migrated + progress.objects_skipped + progress.objects_planned)
        now = time.monotonic()
        bytes_rate = self._bytes_rate.update(now, done[0])
        objects_rate = self._objects_rate.update(now, done[1])
        if done > self._done or (any(done) and not self._last_progress):
            self._last_progress = now_rfc3339()
        self._done = max(done, self._done)
        running = not self._state.final
        return WorkerReport.of(
            progress, state=self._state, pod=self._pod, heartbeat=now_rfc3339(),
            message=self._message, reason=self._reason, open_uploads=tuple(self._uploads.values()),
            upload_intents=tuple(self._intents.values()),
            bytes_per_second=round(bytes_rate) if running else 0,
            objects_per_second=round(objects_rate, 2) if running else 0.0,
            last_progress=self._last_progress, plan=self._plan)

    def _send(self, *, required: bool = False) -> bool:
        """Patch status.workers[<index>]; a required patch (intents, upload IDs, final state) is retried, bounded.

        Returns whether the patch landed.
        """
        patch = {"status": {"workers": {str(self._index): self._report().to_status()}}}
        attempts = REQUIRED_PATCH_ATTEMPTS if required else 1
        for attempt in range(attempts):
            try:
                self._api.patch(kubeapi.MIGRATION_JOBS, self._namespace, self._name, patch,
                                content_type=kubeapi.MERGE_PATCH, subresource="status")
                self._sent_at = time.monotonic()
                return True
            except Exception as error:  # ApiError, or the API server unreachable (requests' errors)
                status = error.status if isinstance(error, kubeapi.ApiError) else type(error).__name__
                log.warning("event=status-patch-failed job=%s/%s index=%d status=%s attempt=%d", self._namespace,
                            self._name, self._index, status, attempt)
                if isinstance(error, kubeapi.ApiError) and error.status == 404:
                    return False
                if attempt + 1 < attempts:
                    time.sleep(min(0.2 * 2**attempt, 2.0))
        return False
