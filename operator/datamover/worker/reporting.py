"""Turns the engine's progress into merge patches of status.workers[<index>], throttled so the API server is spared.

A patch goes out at most every THROTTLE_SECONDS for counters, but at once on a state change and whenever a multipart
upload is opened or closed: the recorded upload IDs are what lets the operator's janitor clean up after a crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from datamover.api import GROUP, PLURAL, VERSION, UploadRecord, WorkerReport, WorkerState, now_rfc3339
from datamover.engine import OpenUpload, Progress

log = logging.getLogger("datamover.worker")

THROTTLE_SECONDS = 2.0
MERGE_PATCH = "application/merge-patch+json"


class StatusReporter:
    """The engine's ProgressSink for one worker; thread-safe (engine threads call it concurrently)."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str, name: str, index: int, pod: str,
                 still_open: Iterable[UploadRecord] = ()) -> None:
        self._api, self._namespace, self._name, self._index, self._pod = api, namespace, name, index, pod
        self._lock = threading.Lock()
        self._state = WorkerState.STARTING
        self._progress: Progress | None = None
        # Uploads an earlier attempt left that could not be aborted yet stay recorded for the operator's janitor.
        self._uploads: dict[tuple[str, str], UploadRecord] = {(u.key, u.upload_id): u for u in still_open}
        self._sent_at = 0.0
        self._message = ""
        self._reason = ""

    def start(self, *, aborting: bool) -> None:
        with self._lock:
            self._state = WorkerState.ABORTING if aborting else WorkerState.RUNNING
            self._send()

    def on_progress(self, progress: Progress) -> None:
        with self._lock:
            # The first write is news at once: it is what moves the job from pending to running.
            first_write = progress.destination_written and not (self._progress and self._progress.destination_written)
            self._progress = progress
            state = WorkerState.ABORTING if progress.state.lower().startswith("abort") else self._state
            changed, self._state = state is not self._state, state
            if changed or first_write or time.monotonic() - self._sent_at >= THROTTLE_SECONDS:
                self._send()

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self._lock:
            self._uploads[(upload.key, upload.upload_id)] = UploadRecord(upload.key, upload.upload_id)
            self._send(required=True)

    def on_upload_closed(self, upload: OpenUpload) -> None:
        with self._lock:
            self._uploads.pop((upload.key, upload.upload_id), None)
            self._send(required=True)

    def finish(self, state: WorkerState, progress: Progress, message: str, reason: str = "") -> None:
        with self._lock:
            self._state, self._progress, self._message, self._reason = state, progress, message, reason
            self._send(required=True)

    def _report(self) -> WorkerReport:
        p = self._progress
        return WorkerReport(
            state=self._state,
            pod=self._pod,
            heartbeat=now_rfc3339(),
            message=self._message,
            reason=self._reason,
            objects_total=p.objects_total if p else 0,
            objects_migrated=p.objects_migrated if p else 0,
            objects_skipped=p.objects_skipped if p else 0,
            objects_failed=p.objects_failed if p else 0,
            bytes_total=p.bytes_total if p else 0,
            bytes_migrated=p.bytes_migrated if p else 0,
            bytes_skipped=p.bytes_skipped if p else 0,
            destination_written=p.destination_written if p else False,
            listing_done=p.listing_done if p else False,
            open_uploads=tuple(self._uploads.values()),
        )

    def _send(self, *, required: bool = False) -> None:
        """Patch status.workers[<index>]; a required patch (upload IDs, final state) is retried until it lands."""
        patch = {"status": {"workers": {str(self._index): self._report().to_status()}}}
        for attempt in range(10 if required else 1):
            try:
                self._api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, self._namespace, PLURAL, self._name, patch, _content_type=MERGE_PATCH
                )
                self._sent_at = time.monotonic()
                return
            except ApiException as error:
                log.warning("event=status-patch-failed job=%s/%s index=%d status=%s attempt=%d", self._namespace,
                            self._name, self._index, error.status, attempt)
                if error.status == 404:
                    return
                time.sleep(min(0.2 * 2**attempt, 2.0))
