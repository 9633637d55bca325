"""One worker's migration: list its shard of the source, run every object through ObjectMover, stop cleanly.

The main thread lists and dispatches (never more than `concurrency` objects ahead, so memory stays flat however many
keys the bucket holds) and drives the worker state machine; object threads run ObjectMover; a shared part pool runs
the parts of large objects.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from datamover.backends.base import ErrorKind, ObjectStore, ObjectSummary, StoreError
from datamover.engine.api import (
    AbortSignal,
    MigrationOptions,
    MigrationResult,
    OpenUpload,
    Outcome,
    ProgressSink,
)
from datamover.engine.copy import UNKNOWN, DestinationHint, ObjectCopy, ObjectMover, RunContext
from datamover.engine.fsm import ObjectState, WorkerState, kv, next_worker_state
from datamover.engine.progress import ProgressTracker

log = logging.getLogger("datamover.engine")

# How many failed keys a result lists (the counts are always complete).
MAX_REPORTED_FAILURES = 100
# How often the dispatcher, while waiting, looks at the abort flag.
POLL_SECONDS = 0.1


def shard_of(key: str, shard_count: int) -> int:
    """The worker that owns `key`: a stable hash (SHA-256, not Python's salted hash()) mod the worker count."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count


class _DestinationIndex:
    """Walks the destination listing in step with the source listing, so checking an object costs no request.

    Both listings come back in key order (UTF-8 byte order, which is also Python's str order), and re-rooting keys
    from one prefix to the other keeps that order, so a merge walk finds each destination key with one page of memory.
    If the order ever looks wrong, or the destination may not be listed, it answers UNKNOWN and objects are checked
    with HEAD instead: slower, never wrong.
    """

    def __init__(self, destination: ObjectStore, abort: AbortSignal, shard: str) -> None:
        self._destination = destination
        self._abort = abort
        self._shard = shard
        self._page: list[ObjectSummary] = []
        self._position = 0
        self._token: str | None = None
        self._exhausted = False
        self._disabled = False
        self._last_key: str | None = None

    def _disable(self, why: str) -> None:
        self._disabled = True
        log.warning(kv(event="destination_index_disabled", shard=self._shard, reason=why))

    def lookup(self, key: str) -> DestinationHint:
        if self._disabled:
            return UNKNOWN
        if self._last_key is not None and key <= self._last_key:
            self._disable(f"source listing out of order at {key!r}")
            return UNKNOWN
        self._last_key = key
        while True:
            while self._position < len(self._page):
                item = self._page[self._position]
                if item.key < key:
                    self._position += 1
                elif item.key == key:
                    return DestinationHint(known=True, existing=item)
                else:
                    return DestinationHint(known=True, existing=None)
            if self._exhausted:
                return DestinationHint(known=True, existing=None)
            if not self._next_page():
                return UNKNOWN

    def _next_page(self) -> bool:
        if self._abort.checkpoint("before_list_page", None):
            return False  # the dispatcher sees the abort right after this lookup
        try:
            page = self._destination.list_page(self._destination.prefix, self._token)
        except StoreError as error:
            if error.kind is not ErrorKind.PERMANENT:
                raise
            self._disable(error.message)  # e.g. write-only credentials: fall back to HEAD per object
            return False
        previous = self._page[-1].key if self._page else None
        self._page, self._position = list(page.objects), 0
        if previous is not None and self._page and self._page[0].key <= previous:
            self._disable("destination listing out of order")
            return False
        self._token = page.next_token
        self._exhausted = page.next_token is None
        return True


class _Worker:
    """The worker state machine around listing, dispatch and draining."""

    def __init__(
        self, source: ObjectStore, destination: ObjectStore, options: MigrationOptions, abort: AbortSignal,
        sink: ProgressSink,
    ) -> None:
        self.source = source
        self.destination = destination
        self.options = options
        self.abort = abort
        self.sink = sink
        self.shard = f"{options.shard_index}/{options.shard_count}"
        self.state = WorkerState.PENDING
        self.tracker = ProgressTracker(sink, options.progress_interval, str(self.state))
        self.failures: list[ObjectCopy] = []
        self._failures_lock = threading.Lock()

    def _transition(self, event: str, reason: str | None = None) -> None:
        before = self.state
        self.state = next_worker_state(before, event)
        log.info(kv(**{"event": "transition", "machine": "worker", "shard": self.shard, "from": before,
                       "to": self.state, "on": event, "reason": reason}))
        self.tracker.set_state(str(self.state))

    def _result(self, error: str | None) -> MigrationResult:
        outcome = {
            WorkerState.SUCCEEDED: Outcome.SUCCEEDED, WorkerState.ABORTED: Outcome.ABORTED,
        }.get(self.state, Outcome.FAILED)
        progress = self.tracker.final()
        log.info(kv(event="finished", shard=self.shard, outcome=outcome.value, migrated=progress.objects_migrated,
                    skipped=progress.objects_skipped, failed=progress.objects_failed,
                    aborted=progress.objects_aborted, retained=progress.objects_retained, error=error))
        failed_keys = tuple(copy.source.key for copy in self.failures)
        return MigrationResult(outcome=outcome, progress=progress, error=error, failed_keys=failed_keys,
                               retained_keys=progress.retained_keys)

    def run(self) -> MigrationResult:
        if self.abort.requested:
            self._transition("abort", self.abort.reason)
            return self._result(None)
        watch = _StallWatch((self.source, self.destination), self.options.stall_timeout, self.shard)
        watch.start()
        try:
            return self._run(watch)
        finally:
            watch.stop()

    def _run(self, watch: _StallWatch) -> MigrationResult:
        try:
            self.source.check_access()
            self.destination.check_access()
        except StoreError as error:
            message = watch.error.message if watch.error else error.message
            self._transition("fatal_error", message)
            return self._result(message)
        self._transition("start")
        server_side = self.destination.can_copy_server_side_from(self.source)
        log.info(kv(event="plan", shard=self.shard, source=self.source.describe(),
                    destination=self.destination.describe(), server_side_copy=server_side,
                    remain_source=self.options.remain_source))
        with (
            ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="datamover-object") as object_pool,
            ThreadPoolExecutor(self.options.part_concurrency, thread_name_prefix="datamover-part") as part_pool,
        ):
            context = RunContext(
                source=self.source, destination=self.destination, options=self.options, abort=self.abort,
                sink=self.sink, tracker=self.tracker, part_pool=part_pool, shard=self.shard, server_side=server_side,
            )
            watch.on_stall = context.report_fatal
            if watch.error is not None:
                context.report_fatal(watch.error)
            in_flight: set[Future[None]] = set()
            try:
                self._dispatch(context, object_pool, in_flight)
            except StoreError as error:
                # Listing that still fails after botocore's retries leaves nothing sensible to do: stop.
                context.report_fatal(error)
            except BaseException as error:
                context.report_fatal(StoreError(ErrorKind.OTHER, f"internal error while listing: {error!r}"))
                log.exception(kv(event="dispatch_failed", shard=self.shard))
            while in_flight:
                _, in_flight = wait(in_flight, timeout=POLL_SECONDS)
                self._notice_stop(context)
            self._notice_stop(context)
        return self._finish(context)

    def _notice_stop(self, context: RunContext) -> None:
        """Move the worker machine as soon as an abort or a permanent error is seen (objects stop on their own)."""
        if self.state is WorkerState.RUNNING and context.fatal_error is not None:
            self._transition("fatal_error", context.fatal_error.message)
        elif self.state is WorkerState.RUNNING and self.abort.requested:
            self._transition("abort", self.abort.reason)

    def _stopping(self, context: RunContext) -> bool:
        self._notice_stop(context)
        return self.abort.requested or context.stop_worker.is_set()

    def _dispatch(self, context: RunContext, pool: ThreadPoolExecutor, in_flight: set[Future[None]]) -> None:
        slots = threading.BoundedSemaphore(self.options.concurrency)
        index = _DestinationIndex(self.destination, self.abort, self.shard)
        token: str | None = None
        while True:
            if self.abort.checkpoint("before_list_page", None) or self._stopping(context):
                return
            page = self.source.list_page(self.source.prefix, token)
            for summary in page.objects:
                if shard_of(summary.key, self.options.shard_count) != self.options.shard_index:
                    continue
                self.tracker.discovered(summary.size)
                while not slots.acquire(timeout=POLL_SECONDS):
                    if self._stopping(context):
                        return
                if self._stopping(context):
                    slots.release()
                    return
                hint = index.lookup(context.destination_key(summary.key))
                in_flight.add(pool.submit(self._move_one, context, summary, hint, slots))
                in_flight.difference_update([future for future in in_flight if future.done()])
            if page.next_token is None:
                self.tracker.listing_done()
                return
            token = page.next_token

    def _move_one(
        self, context: RunContext, summary: ObjectSummary, hint: DestinationHint, slots: threading.BoundedSemaphore,
    ) -> None:
        try:
            copy = ObjectMover(context, summary, hint).run()
            if copy.state is ObjectState.FAILED:
                with self._failures_lock:
                    if len(self.failures) < MAX_REPORTED_FAILURES:
                        self.failures.append(copy)
        finally:
            slots.release()

    def _finish(self, context: RunContext) -> MigrationResult:
        progress = self.tracker.snapshot()
        if self.state is WorkerState.RUNNING:
            unfinished = not progress.listing_done or progress.objects_aborted or progress.objects_retained
            if self.abort.requested and unfinished:
                self._transition("abort", self.abort.reason)
            elif progress.objects_failed or progress.objects_retained:
                self._transition("finished_with_failures")
                parts = []
                if progress.objects_failed:
                    first = self.failures[0].error if self.failures else "see the worker log"
                    parts.append(f"{progress.objects_failed} of {progress.objects_total} objects failed; "
                                 f"first: {first}")
                if progress.objects_retained:
                    parts.append(f"{progress.objects_retained} moved object(s) are in both places (source delete "
                                 f"failed), first: {progress.retained_keys[0]!r}")
                return self._result("; ".join(parts))
            else:
                self._transition("finished")
                return self._result(None)
        if self.state is WorkerState.FAILING:
            self._transition("drained")
            return self._result(context.fatal_error.message if context.fatal_error else "stopped by an error")
        self._transition("drained")
        return self._result(None)


class _StallWatch:
    """The stall detector: a store whose requests have waited 3/4 of stall_timeout with no answer (no response,
    no body bytes) stops the worker with a permanent-looking error naming the endpoint.

    The store is interrupted too, so botocore's remaining retries fail at once; the attempts on the wire end within
    the request timeout the backend derived from the same setting (a quarter of it): the worker fails within
    stall_timeout of the endpoint's last answer, not after every retry has timed out.
    """

    def __init__(self, stores: tuple[ObjectStore, ...], stall_timeout: float, shard: str) -> None:
        self._stores = stores
        self._limit = stall_timeout * 3 / 4
        self._stall_timeout = stall_timeout
        self._shard = shard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="datamover-stall-watch", daemon=True)
        self.error: StoreError | None = None
        self.on_stall: Callable[[StoreError], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self._limit / 4)):
            for store in self._stores:
                waited = store.stalled_for()
                if waited < self._limit:
                    continue
                message = (f"no answer from {store.describe()} for {waited:.0f} s (stallTimeoutSeconds="
                           f"{self._stall_timeout:g}): the endpoint accepts connections but does not respond")
                self.error = StoreError(ErrorKind.PERMANENT, message, "Stalled")
                log.warning(kv(event="stalled", shard=self._shard, store=store.describe(), waited=f"{waited:.1f}"))
                for each in self._stores:
                    each.interrupt(message)
                if self.on_stall is not None:
                    self.on_stall(self.error)
                return


def migrate(
    source: ObjectStore, destination: ObjectStore, options: MigrationOptions, abort: AbortSignal, sink: ProgressSink,
) -> MigrationResult:
    """Migrate this worker's shard of `source` to `destination`; blocks until done, aborted or failed; never raises
    for store errors (they end in Outcome.FAILED with a message naming endpoint, bucket and key)."""
    return _Worker(source, destination, options, abort, sink).run()


def abort_uploads(store: ObjectStore, uploads: Iterable[OpenUpload]) -> list[OpenUpload]:
    """Abort multipart uploads recorded by a worker that could not clean up (the operator's janitor).

    Returns the uploads that are now closed: aborted here, or already gone (completed or aborted before). Uploads that
    could not be aborted (store unreachable, access denied) are left out so the caller keeps them and retries.
    """
    closed: list[OpenUpload] = []
    for upload in uploads:
        try:
            store.abort_multipart(upload.key, upload.upload_id)
        except StoreError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                log.warning(kv(event="janitor_abort_failed", key=upload.key, upload_id=upload.upload_id,
                               error=error.message))
                continue
        log.info(kv(event="janitor_upload_closed", bucket=upload.bucket, key=upload.key, upload_id=upload.upload_id))
        closed.append(upload)
    return closed
