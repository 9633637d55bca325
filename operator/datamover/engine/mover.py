"""One object through the object state machine: check, copy by the right mechanism, verify, delete, undo on any stop.

Written once for every backend pair; the mechanisms live one per module (single.py, multipart.py, server_copy.py),
the proofs in verify.py, and the whole state of the object in context.ObjectCopy.
"""

from __future__ import annotations

import logging
import time

from datamover.backends.base import ErrorKind, ObjectSummary, StoreError
from datamover.engine import multipart, server_copy, single, verify
from datamover.engine.context import IntegrityError, ObjectCopy, RunContext, Stopped
from datamover.engine.fsm import ObjectState, kv, next_object_state
from datamover.engine.listing import UNKNOWN, DestinationHint

log = logging.getLogger("datamover.engine")


class ObjectMover:
    """Runs one ObjectCopy through the object state machine; never raises (errors end in a terminal state)."""

    def __init__(self, context: RunContext, summary: ObjectSummary, hint: DestinationHint = UNKNOWN) -> None:
        self.ctx = context
        self.copy = ObjectCopy(source=summary, destination_key=context.destination_key(summary.key))
        self._hint = hint

    def _transition(self, event: str) -> None:
        before = self.copy.state
        self.copy.state = next_object_state(before, event)
        log.info(kv(**{
            "event": "transition", "machine": "object", "shard": self.ctx.shard, "key": self.copy.source.key,
            "from": before, "to": self.copy.state, "on": event, "strategy": self.copy.strategy or None,
            "error": self.copy.error,
        }))

    def run(self) -> ObjectCopy:
        key = self.copy.source.key
        started = time.time()
        self.ctx.tracker.started(key)
        try:
            self._run()
        except Stopped:
            self._cleanup()
            self._transition("abort")
        except StoreError as error:
            self.copy.error = error.message
            self.copy.error_code = error.code or error.kind.value
            if error.kind is ErrorKind.PERMANENT:
                self.ctx.report_fatal(error)
            self._cleanup()
            self._transition(self._error_event())
        except IntegrityError as error:
            self.copy.error = f"{error} ({self.ctx.destination.describe(self.copy.destination_key)})"
            self.copy.error_code = "IntegrityError"
            self._cleanup()
            self._transition("error")
        except Exception as error:  # a bug must fail this object loudly, not leave an upload open or kill the pool
            log.exception(kv(event="unexpected_error", shard=self.ctx.shard, key=key))
            self.copy.error = f"internal error on {self.ctx.source.describe(key)}: {type(error).__name__}: {error}"
            self.copy.error_code = "InternalError"
            self._cleanup()
            self._transition(self._error_event())
        finally:
            size = self.copy.source_info.size if self.copy.source_info else self.copy.source.size
            self.ctx.tracker.finished(key, self.copy.state, size, self.copy.parts_bytes)
            if self.ctx.report is not None:
                self.ctx.report.record(self.copy, self.ctx.options.remain_source, started, time.time())
        return self.copy

    def _error_event(self) -> str:
        # Once the source delete has started, the verified copy is final: a failure leaves the key in both places.
        return "delete_failed" if self.copy.state is ObjectState.DELETING_SOURCE else "error"

    def _run(self) -> None:
        ctx, copy = self.ctx, self.copy
        ctx.checkpoint("before_object", copy.source.key)
        self._transition("start")
        if verify.already_at_destination(ctx, copy, self._hint):
            if ctx.options.remain_source:
                self._transition("identical")
                return
            self._transition("identical_move")
            self._delete_source()
            return
        self._transition("differs")
        self._copy()
        self._transition("copied")
        verify.verify(ctx, copy)
        if ctx.options.remain_source:
            self._transition("verified")
            return
        self._transition("verified_move")
        self._delete_source()

    def _copy(self) -> None:
        """Choose the mechanism: a single request each way, server-side, or in parts (streamed or server-side)."""
        ctx, copy = self.ctx, self.copy
        if ctx.copier is not None and copy.source.size <= ctx.destination.capabilities.limits.single_copy_limit:
            # Up to the store's single-copy limit one CopyObject does it all: no HEAD before, none after if its
            # answer carries the source's ETag. Fewer requests than parts, and faster (docs/performance.md).
            copy.strategy = "server_copy"
            server_copy.copy_listed(ctx, copy)
            return
        if copy.source.size <= ctx.options.multipart_threshold and ctx.copier is None:
            # Small object: one GET (its response describes the version read, so no HEAD) and one PUT.
            copy.strategy = "single"
            if single.copy_single(ctx, copy):
                return
            copy.strategy = ""  # it grew past the threshold since listing: copy it as a large object
        info = verify.stat_source(ctx, copy)
        if info.size <= ctx.options.multipart_threshold:
            if ctx.copier:
                copy.strategy = "server_copy"
                server_copy.copy_whole(ctx, copy, info)
            else:
                copy.strategy = "single"
                if not single.copy_single(ctx, copy):
                    raise StoreError(ErrorKind.PRECONDITION, f"object keeps changing size while being copied: "
                                                             f"{ctx.source.describe(info.key)}")
            return
        copy.strategy = "server_part_copy" if ctx.copier else "multipart"
        copy.part_size, copy.matched_layout = multipart.part_layout(ctx, info)
        writer = server_copy.copy_part if ctx.copier else multipart.stream_part
        multipart.copy_in_parts(ctx, copy, info, writer)

    def _delete_source(self) -> None:
        """Finish the move of this object: its copy is verified, so the delete (one request) is done even if abort
        or a permanent error elsewhere came meanwhile. The checkpoint's hook runs (crash injection), abort is not
        honoured. A delete that fails leaves the key in both places, reported per key (state retained)."""
        key = self.copy.source.key
        self.ctx.abort.checkpoint("before_delete_source", key)
        self.ctx.source.delete(key)
        self._transition("source_deleted")

    def _cleanup(self) -> None:
        """Undo what a stop left half-done, so the object is untouched at the destination (or fully verified)."""
        copy, ctx = self.copy, self.ctx
        multipart.abort_upload_of(ctx, copy)
        if copy.wrote_destination and copy.state in (ObjectState.COPYING, ObjectState.VERIFYING):
            # A complete but unverified object must not stay: the invariant allows only untouched or verified.
            try:
                ctx.destination.delete(copy.destination_key)
                copy.wrote_destination = False
                log.warning(kv(event="unverified_copy_deleted", shard=ctx.shard, key=copy.destination_key))
            except StoreError as error:
                log.error(kv(event="unverified_copy_delete_failed", shard=ctx.shard, key=copy.destination_key,
                             error=error.message))
