"""One worker's migration: claim pages of the job's one listing, run every object through ObjectMover, stop cleanly.

The main thread claims pages (engine.shards) and dispatches (never more than `concurrency` objects ahead and one page
of keys in hand, so memory stays flat however many keys the bucket holds) and drives the worker state machine; object
threads run ObjectMover; a shared part pool runs the parts of large objects.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

from datamover.backends.base import (
    ErrorKind,
    ObjectStore,
    ObjectSummary,
    ServerSideCopy,
    StoreError,
    server_side_copier,
)
from datamover.engine import verify
from datamover.engine.abort import AbortSignal
from datamover.engine.budget import BufferBudget
from datamover.engine.context import ObjectCopy, RunContext, Stopped
from datamover.engine.fsm import ObjectState, WorkerState, kv, next_worker_state
from datamover.engine.listing import UNKNOWN, DestinationHint, DestinationIndex
from datamover.engine.mover import ObjectMover
from datamover.engine.options import MigrationOptions, MigrationResult, Outcome
from datamover.engine.plan import PlanTally, ReadOnlyStore, RefusingCopier, estimate_copy
from datamover.engine.progress import ProgressSink, ProgressTracker
from datamover.engine.report import ReportWriter
from datamover.engine.shards import KeyRange, LedgerStore, MemoryLedgerStore, SharedListing, list_range
from datamover.engine.stall import StallWatch
from datamover.engine.throttle import ThrottledCopier, ThrottledStore

log = logging.getLogger("datamover.engine")

# How many failed keys a result lists (the counts are always complete).
MAX_REPORTED_FAILURES = 100
# How often the dispatcher, while waiting, looks at the abort flag.
POLL_SECONDS = 0.1


class _RangeWork:
    """Counts one range's objects in flight; once all are dispatched and ended well, the range is closed in the
    ledger (a range with an object failed, aborted or retained stays open, so a restarted worker lists it again)."""

    def __init__(self, claimed: KeyRange, listing: SharedListing) -> None:
        self._range = claimed
        self._listing = listing
        self._lock = threading.Lock()
        self._running = 0
        self._all_dispatched = False
        self._clean = True
        self._closed = False

    def started(self) -> None:
        with self._lock:
            self._running += 1

    def ended(self, state: ObjectState) -> None:
        with self._lock:
            self._running -= 1
            self._clean = self._clean and state in (ObjectState.MIGRATED, ObjectState.SKIPPED)
            self._maybe_close()

    def dispatched(self) -> None:
        with self._lock:
            self._all_dispatched = True
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self._all_dispatched and self._running == 0 and self._clean and not self._closed:
            self._closed = True
            self._listing.close(self._range)


class _Worker:
    """The worker state machine around listing, dispatch and draining."""

    def __init__(
        self, source: ObjectStore, destination: ObjectStore, options: MigrationOptions, abort: AbortSignal,
        sink: ProgressSink, ledger: LedgerStore, copier: ServerSideCopy | None, report: ReportWriter | None,
        keys: Iterable[str] | None, tally: PlanTally | None = None,
    ) -> None:
        self.source = source
        self.report = report
        self.keys = keys
        self.destination = destination
        self.copier = copier
        self.tally = tally  # plan mode: objects are examined, never moved
        self.options = options
        self.abort = abort
        self.sink = sink
        self.shard = f"{options.shard_index}/{options.shard_count}"
        self.state = WorkerState.PENDING
        self.tracker = ProgressTracker(sink, options.progress_interval, self.state)
        self.failures: list[ObjectCopy] = []
        self._failures_lock = threading.Lock()
        # A lock holder silent for longer than a stalled store is allowed to be is taken for dead.
        self.listing = SharedListing(ledger, options.shard_index, 2 * options.stall_timeout, self.shard)
        self._index: DestinationIndex | None = None  # the destination walk of the current run of ranges
        self._reach: str | None = None  # the last key of the range dispatched last (where a contiguous one starts)

    def _transition(self, event: str, reason: str | None = None) -> None:
        before = self.state
        self.state = next_worker_state(before, event)
        log.info(kv(**{"event": "transition", "machine": "worker", "shard": self.shard, "from": before,
                       "to": self.state, "on": event, "reason": reason}))
        self.tracker.set_state(self.state)

    def _result(self, error: str | None, fatal: StoreError | None = None) -> MigrationResult:
        outcome = {
            WorkerState.SUCCEEDED: Outcome.SUCCEEDED, WorkerState.ABORTED: Outcome.ABORTED,
        }.get(self.state, Outcome.FAILED)
        progress = self.tracker.final()
        log.info(kv(event="finished", shard=self.shard, outcome=outcome.value, migrated=progress.objects_migrated,
                    skipped=progress.objects_skipped, failed=progress.objects_failed,
                    aborted=progress.objects_aborted, retained=progress.objects_retained, error=error))
        failed_keys = tuple(copy.source.key for copy in self.failures)
        return MigrationResult(outcome=outcome, progress=progress, error=error, failed_keys=failed_keys,
                               retained_keys=progress.retained_keys, fatal_code=fatal.code if fatal else "",
                               fatal_kind=fatal.kind.value if fatal else "",
                               plan=self.tally.result() if self.tally else None)

    def run(self) -> MigrationResult:
        if self.abort.requested:
            self._transition("abort", self.abort.reason)
            return self._result(None)
        watch = StallWatch((self.source, self.destination), self.options.stall_timeout, self.shard)
        watch.start()
        try:
            return self._run(watch)
        finally:
            watch.stop()

    def _run(self, watch: StallWatch) -> MigrationResult:
        try:
            self.source.check_access()
            self.destination.check_access()
        except StoreError as error:
            cause = watch.error or error
            self._transition("fatal_error", cause.message)
            return self._result(cause.message, cause)
        self._transition("start")
        copier = self.copier
        if copier is not None and self.options.throttle is not None:
            copier = ThrottledCopier(copier, self.options.throttle, self.abort)
        log.info(kv(event="plan", shard=self.shard, source=self.source.describe(),
                    destination=self.destination.describe(), server_side_copy=copier is not None,
                    remain_source=self.options.remain_source, mode="plan" if self.tally else "run"))
        with (
            ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="datamover-object") as object_pool,
            ThreadPoolExecutor(self.options.part_concurrency, thread_name_prefix="datamover-part") as part_pool,
        ):
            context = RunContext(
                source=self.source, destination=self.destination, options=self.options, abort=self.abort,
                sink=self.sink, tracker=self.tracker, part_pool=part_pool,
                buffers=BufferBudget(self.options.buffer_budget), shard=self.shard, copier=copier, report=self.report,
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
            try:
                self.listing.flush()
            except Exception as error:  # costs only a second listing of done ranges if this worker is restarted
                log.warning(kv(event="ledger_flush_failed", shard=self.shard, error=repr(error)))
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
        """Dispatch the ranges an earlier attempt of this worker left open, then claim pages until the job's listing
        is finished: each page is listed once per job, by the worker that claims it (engine.shards)."""
        slots = threading.BoundedSemaphore(self.options.concurrency)

        if self.keys is not None:
            self._dispatch_keys(context, pool, in_flight, slots, self.keys)
            return

        def before_page() -> bool:
            return self.abort.checkpoint("before_list_page", None) or self._stopping(context)

        for resumed in self.listing.resume():
            log.info(kv(event="range_resumed", shard=self.shard, after=resumed.after, through=resumed.through))
            objects = list_range(self.source, resumed, before_page)
            if not self._dispatch_range(context, pool, in_flight, slots, resumed, objects):
                return
        while True:
            claim = self.listing.claim(self.source, self.abort, lambda: self._stopping(context))
            if claim is None:
                if not self._stopping(context):
                    self.tracker.listing_done()
                return
            if not self._dispatch_range(context, pool, in_flight, slots, claim.range, iter(claim.objects)):
                return

    def _dispatch_range(
        self, context: RunContext, pool: ThreadPoolExecutor, in_flight: set[Future[None]],
        slots: threading.BoundedSemaphore, claimed: KeyRange, objects: Iterator[ObjectSummary],
    ) -> bool:
        """Run every selected object of one range, at most `concurrency` at a time; False if stopped part way."""
        if self._index is None or claimed.after != self._reach:
            # Ranges that continue each other share one destination walk; any other starts its own after its start.
            start = context.destination_key(claimed.after) if claimed.after else ""
            self._index = DestinationIndex(self.destination, self.abort, self.shard, start_after=start)
        self._reach = claimed.through
        work = _RangeWork(claimed, self.listing)
        for summary in objects:
            if not self.options.filter.selects(summary, summary.key[len(self.source.prefix):]):
                self.tracker.excluded()
                if self.tally:
                    self.tally.excluded(summary.size)
                if self.report is not None:
                    self.report.record_excluded(summary.key, summary.size, summary.etag)
                continue
            self.tracker.discovered(summary.size)
            while not slots.acquire(timeout=POLL_SECONDS):
                if self._stopping(context):
                    return False
            if self._stopping(context):
                slots.release()
                return False
            hint = self._index.lookup(context.destination_key(summary.key))
            work.started()
            in_flight.add(pool.submit(self._move_one, context, summary, hint, slots, work))
            in_flight.difference_update([future for future in in_flight if future.done()])
        if self._stopping(context):
            return False
        if self.tally is None:
            # A plan's figures live in this worker's memory until its final report: a restarted worker must plan
            # every range it claimed again, so a plan leaves its ranges open.
            work.dispatched()
        return True

    def _dispatch_keys(self, context: RunContext, pool: ThreadPoolExecutor, in_flight: set[Future[None]],
                       slots: threading.BoundedSemaphore, keys: Iterable[str]) -> None:
        """Run the keys given (spec.keysFrom) instead of a listing: this worker's share of them, by a stable hash of the
        key, so the workers split them without overlap and without sharing anything; each is looked up (HEAD) in
        the object thread, then goes the usual way. A restarted worker runs its share again: what is done is skipped
        as identical."""
        seen: set[str] = set()
        for key in keys:
            if zlib.crc32(key.encode()) % self.options.shard_count != self.options.shard_index or key in seen:
                continue
            seen.add(key)
            while not slots.acquire(timeout=POLL_SECONDS):
                if self._stopping(context):
                    return
            if self._stopping(context):
                slots.release()
                return
            in_flight.add(pool.submit(self._move_key, context, key, slots))
            in_flight.difference_update([future for future in in_flight if future.done()])
        if not self._stopping(context):
            self.tracker.listing_done()

    def _move_key(self, context: RunContext, key: str, slots: threading.BoundedSemaphore) -> None:
        """One key of spec.keysFrom: stat it in the source, then move it as if listed. Holds one dispatch slot."""
        handed_over = False  # _move_one releases the slot once it has it
        try:
            problem = ""
            if not key.startswith(self.source.prefix):
                problem, code = f"key {key!r} is not under the source prefix {self.source.prefix!r}", "OutsidePrefix"
            else:
                try:
                    info = self.source.stat(key)
                except StoreError as error:
                    info, problem, code = None, error.message, error.code or error.kind.value
                if info is None and not problem:
                    problem, code = f"not in the source: {self.source.describe(key)}", "NoSuchKey"
            if problem or info is None:
                self.tracker.discovered(0)
                self.tracker.finished(key, ObjectState.FAILED, 0)
                if self.report is not None:
                    self.report.record_failed(key, code, problem)
                with self._failures_lock:
                    if len(self.failures) < MAX_REPORTED_FAILURES:
                        self.failures.append(ObjectCopy(ObjectSummary(key, 0, ""), key, ObjectState.FAILED,
                                                        error=problem, error_code=code))
                return
            summary = ObjectSummary(info.key, info.size, info.etag)
            if not self.options.filter.selects(summary, key[len(self.source.prefix):]):
                self.tracker.excluded()
                if self.report is not None:
                    self.report.record_excluded(key, info.size, info.etag)
                return
            self.tracker.discovered(info.size)
            handed_over = True
            self._move_one(context, summary, UNKNOWN, slots, None)
        finally:
            if not handed_over:
                slots.release()

    def _move_one(
        self, context: RunContext, summary: ObjectSummary, hint: DestinationHint, slots: threading.BoundedSemaphore,
        work: _RangeWork | None,
    ) -> None:
        state = ObjectState.FAILED
        try:
            copy = self._plan_one(context, summary, hint) if self.tally else ObjectMover(context, summary, hint).run()
            state = copy.state
            if copy.state is ObjectState.FAILED:
                with self._failures_lock:
                    if len(self.failures) < MAX_REPORTED_FAILURES:
                        self.failures.append(copy)
        finally:
            if work is not None:
                work.ended(state)
            slots.release()

    def _plan_one(self, context: RunContext, summary: ObjectSummary, hint: DestinationHint) -> ObjectCopy:
        """Compare one object as a run would (the same skip-identical proof) and count what the run would do."""
        assert self.tally is not None
        copy = ObjectCopy(source=summary, destination_key=context.destination_key(summary.key))
        move = not self.options.remain_source
        try:
            context.checkpoint("before_object", summary.key)
            identical = verify.already_at_destination(context, copy, hint)
        except Stopped:
            copy.state = ObjectState.ABORTED
        except StoreError as error:
            copy.state, copy.error = ObjectState.FAILED, error.message
            if error.kind is ErrorKind.PERMANENT:
                context.report_fatal(error)
        except Exception as error:  # IntegrityError, or a bug: fail this object loudly, not the pool
            log.exception(kv(event="unexpected_error", shard=self.shard, key=summary.key))
            copy.state = ObjectState.FAILED
            copy.error = f"internal error on {self.source.describe(summary.key)}: {type(error).__name__}: {error}"
        else:
            # A planned object's state stays pending: nothing was done to it (only failures and stops are states).
            if identical:
                self.tally.identical(summary.size, move)
            else:
                estimate = estimate_copy(
                    summary, server_side=context.copier is not None, part_size=self.options.part_size,
                    multipart_threshold=self.options.multipart_threshold,
                    limits=self.destination.capabilities.limits,
                    source_part_layout=self.source.capabilities.part_layout, move=move,
                    source_stated=copy.source_info is not None)
                self.tally.copy(summary.size, estimate, move)
                copy.strategy = estimate.mechanism
            self.tracker.planned(summary.size)
            log.info(kv(event="planned", shard=self.shard, key=summary.key, size=summary.size,
                        action="skip_identical" if identical else "copy", mechanism=copy.strategy or None,
                        delete_source=move))
            return copy
        log.log(logging.INFO if copy.state is ObjectState.ABORTED else logging.WARNING,
                kv(event="plan_object_" + copy.state.value, shard=self.shard, key=summary.key, error=copy.error))
        self.tracker.finished(summary.key, copy.state, summary.size)
        return copy

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
            fatal = context.fatal_error
            return self._result(fatal.message if fatal else "stopped by an error", fatal)
        self._transition("drained")
        return self._result(None)


def migrate(
    source: ObjectStore, destination: ObjectStore, options: MigrationOptions, abort: AbortSignal, sink: ProgressSink,
    ledger: LedgerStore | None = None, report: ReportWriter | None = None, keys: Iterable[str] | None = None,
) -> MigrationResult:
    """Migrate this worker's share of `source` to `destination`; blocks until done, aborted or failed; never raises
    for store errors (they end in Outcome.FAILED with a message naming endpoint, bucket and key).

    The workers of one job (`options.shard_count` of them) share `ledger`, through which each page of the source is
    listed by one of them (engine.shards); a lone worker may leave it out. With `report`, every object's outcome is
    also written there (engine.report); the caller closes it. With `keys` (full source keys), the workers move
    those instead of listing the source, each its share by a hash of the key; `ledger` is then not used."""
    if ledger is None:
        if options.shard_count > 1 and keys is None:
            raise ValueError("workers that share a job must share a ledger, or each would migrate every key")
        ledger = MemoryLedgerStore()
    copier = server_side_copier(destination, source)
    if options.throttle is not None:
        source = ThrottledStore(source, options.throttle, abort)
        destination = ThrottledStore(destination, options.throttle, abort)
    if not options.plan:
        return _Worker(source, destination, options, abort, sink, ledger, copier, report, keys).run()
    # A plan gets the stores only behind ReadOnlyStore, and no copier that can copy: it cannot write.
    readable_source, readable_destination = ReadOnlyStore(source), ReadOnlyStore(destination)
    tally = PlanTally(readable_source, readable_destination)
    return _Worker(readable_source, readable_destination, options, abort, sink, ledger,
                   RefusingCopier() if copier else None, report, keys, tally).run()
