"""Moving one object: choose a strategy, copy, verify, maybe delete the source, honouring abort at checkpoints.

Written once for every backend pair. The whole state of one object's copy lives in `ObjectCopy`, so a reader (or a
debugger) sees in one place what has been done and what must be undone if the copy stops.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from datamover.backends.base import (
    ErrorKind,
    EtagKind,
    ObjectAttributes,
    ObjectHead,
    ObjectStore,
    ObjectSummary,
    StoreError,
)
from datamover.engine.api import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    AbortSignal,
    MiB,
    MigrationOptions,
    OpenUpload,
    ProgressSink,
    UploadIntent,
)
from datamover.engine.cleanup import close_intent
from datamover.engine.fsm import ObjectState, kv, next_object_state
from datamover.engine.progress import ProgressTracker

log = logging.getLogger("datamover.engine")


class Stopped(Exception):
    """Raised at a checkpoint when abort was requested (or a permanent error elsewhere stops the worker)."""


class IntegrityError(Exception):
    """The destination does not hold exactly the source's bytes."""


@dataclass
class RunContext:
    """What every object copy of one migrate() call shares."""

    source: ObjectStore
    destination: ObjectStore
    options: MigrationOptions
    abort: AbortSignal
    sink: ProgressSink
    tracker: ProgressTracker
    part_pool: ThreadPoolExecutor  # shared by all objects: bounds parts (and so part buffers) in flight per worker
    shard: str  # "i/N", carried on every log line
    server_side: bool  # destination can copy from source without the bytes passing through us
    stop_worker: threading.Event = field(default_factory=threading.Event)  # a permanent error: stop like an abort
    fatal_error: StoreError | None = None
    _fatal_lock: threading.Lock = field(default_factory=threading.Lock)

    def checkpoint(self, name: str, key: str | None) -> None:
        if self.abort.checkpoint(name, key) or self.stop_worker.is_set():
            raise Stopped(name)

    def report_fatal(self, error: StoreError) -> None:
        with self._fatal_lock:
            if self.fatal_error is None:
                self.fatal_error = error
        self.stop_worker.set()

    def writing(self) -> None:
        """A write request to the destination is about to start (the operator's pending -> running signal)."""
        self.tracker.destination_written()

    def destination_key(self, source_key: str) -> str:
        return self.destination.prefix + source_key[len(self.source.prefix):]


def choose_part_size(size: int, requested: int) -> int:
    """The requested part size, grown (in whole MiB) until the object fits in 10,000 parts."""
    minimum = -(-size // MAX_PARTS)
    if minimum <= requested:
        return requested
    return min(MAX_PART_SIZE, -(-minimum // MiB) * MiB)


def part_ranges(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, first byte, last byte) for every part, numbered from 1."""
    return [(number, start, min(size, start + part_size) - 1)
            for number, start in enumerate(range(0, size, part_size), start=1)]


def composite_etag(part_digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the concatenated part MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag)


def _http_date(value: str | None) -> object:
    """Expires compared as a time when it parses (stores format HTTP dates differently), else as text."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return value


def same_attributes(a: ObjectAttributes, b: ObjectAttributes) -> bool:
    """Content headers and user metadata equal: an object that differs only here is copied again (exactness)."""
    return (
        (a.content_type, a.content_encoding, a.cache_control, a.content_disposition, a.content_language)
        == (b.content_type, b.content_encoding, b.cache_control, b.content_disposition, b.content_language)
        and _http_date(a.expires) == _http_date(b.expires)
        and dict(a.user_metadata) == dict(b.user_metadata)
    )


@dataclass(frozen=True)
class DestinationHint:
    """What the destination listing said about this object's key; `known=False` means "ask with HEAD"."""

    known: bool
    existing: ObjectSummary | None = None


UNKNOWN = DestinationHint(known=False)


@dataclass
class ObjectCopy:
    """Everything about one object's migration. Only ObjectMover changes it, and only `state` through the table."""

    source: ObjectSummary  # the key as listing saw it (size and ETag at listing time)
    destination_key: str  # the source key re-rooted from the source prefix to the destination prefix
    state: ObjectState = ObjectState.PENDING  # position in OBJECT_TRANSITIONS
    source_head: ObjectHead | None = None  # the version copied: from the GET itself, or a HEAD (pins If-Match)
    destination_existed: bool = False  # the key was at the destination (with other content) before we wrote it
    strategy: str = ""  # "single", "multipart", "server_copy" or "server_part_copy" once chosen
    part_size: int = 0  # bytes per part for the multipart strategies
    upload: OpenUpload | None = None  # the multipart upload while it is open; aborted on any stop
    intent: UploadIntent | None = None  # recorded before the create; cleared once no upload of ours is on the key
    matched_layout: bool = False  # parts laid out as the source's, so the copy's ETag equals the source's
    part_digests: dict[int, bytes] = field(default_factory=dict)  # part number -> MD5 of the bytes we sent
    part_etags: dict[int, str] = field(default_factory=dict)  # part number -> ETag the destination returned
    parts_bytes: int = 0  # bytes of parts uploaded so far (reported as bytes_in_progress until the object ends)
    content_md5: str = ""  # hex MD5 of the whole object, when we streamed it in one request
    written_etag: str = ""  # what the destination said the finished object's ETag is
    wrote_destination: bool = False  # a complete object now sits at destination_key (verified or not yet)
    error: str | None = None  # why the object failed, naming endpoint, bucket and key


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class ObjectMover:
    """Runs one ObjectCopy through the object state machine; never raises (errors end in a terminal state)."""

    def __init__(self, context: RunContext, summary: ObjectSummary, hint: DestinationHint = UNKNOWN) -> None:
        self.ctx = context
        self.copy = ObjectCopy(source=summary, destination_key=context.destination_key(summary.key))
        self._hint = hint
        # Set when one part of this object failed or stopped, so its sibling parts stop at their next chunk.
        self._parts_stop = threading.Event()
        self._parts_lock = threading.Lock()

    def _checkpoint(self, name: str, key: str) -> None:
        self.ctx.checkpoint(name, key)
        if self._parts_stop.is_set():
            raise Stopped(name)

    # -- state machine ------------------------------------------------------------------------------------------

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
        self.ctx.tracker.started(key)
        try:
            self._run()
        except Stopped:
            self._cleanup()
            self._transition("abort")
        except StoreError as error:
            self.copy.error = error.message
            if error.kind is ErrorKind.PERMANENT:
                self.ctx.report_fatal(error)
            self._cleanup()
            self._transition(self._error_event())
        except IntegrityError as error:
            self.copy.error = f"{error} ({self.ctx.destination.describe(self.copy.destination_key)})"
            self._cleanup()
            self._transition("error")
        except Exception as error:  # a bug must fail this object loudly, not leave an upload open or kill the pool
            log.exception(kv(event="unexpected_error", shard=self.ctx.shard, key=key))
            self.copy.error = f"internal error on {self.ctx.source.describe(key)}: {type(error).__name__}: {error}"
            self._cleanup()
            self._transition(self._error_event())
        finally:
            size = self.copy.source_head.size if self.copy.source_head else self.copy.source.size
            self.ctx.tracker.finished(key, self.copy.state, size, self.copy.parts_bytes)
        return self.copy

    def _error_event(self) -> str:
        # Once the source delete has started, the verified copy is final: a failure leaves the key in both places.
        return "delete_failed" if self.copy.state is ObjectState.DELETING_SOURCE else "error"

    def _run(self) -> None:
        ctx, copy = self.ctx, self.copy
        ctx.checkpoint("before_object", copy.source.key)
        self._transition("start")
        if self._already_at_destination():
            if ctx.options.remain_source:
                self._transition("identical")
                return
            self._transition("identical_move")
            self._delete_source()
            return
        self._transition("differs")
        self._copy()
        self._transition("copied")
        self._verify()
        if ctx.options.remain_source:
            self._transition("verified")
            return
        self._transition("verified_move")
        self._delete_source()

    def _already_at_destination(self) -> bool:
        """Skip-identical, decided exactly: same size, same content headers and user metadata, same bytes.

        Size alone never decides. Bytes are the same when the ETags are equal and comparable (MD5, or the same
        multipart composite); when the destination's ETag is a composite the source's is not (or a different
        layout), the source is hashed in the destination's part layout and compared with it. An object whose
        metadata differs is copied again. Costs no request when sizes differ, a HEAD on each side otherwise.
        """
        ctx, copy = self.ctx, self.copy
        if self._hint.known:
            existing = self._hint.existing
            written = None
        else:
            written = ctx.destination.head(copy.destination_key)
            existing = ObjectSummary(written.key, written.size, written.etag) if written else None
        copy.destination_existed = existing is not None
        if existing is None or existing.size != copy.source.size:
            return False
        if written is None:
            written = ctx.destination.head(copy.destination_key)
            if written is None:
                return False
        source = self._head_source()
        if source.size != written.size:
            return False
        if not same_attributes(source.attributes, written.attributes):
            log.info(kv(event="metadata_differs", shard=ctx.shard, key=copy.source.key))
            return False
        return self._same_bytes(source, written)

    def _same_bytes(self, source: ObjectHead, written: ObjectHead) -> bool:
        if EtagKind.OPAQUE in (source.etag_kind, written.etag_kind):
            return False  # an opaque ETag (SSE-KMS, SSE-C, own scheme) proves nothing cheaply: copy again
        if source.etag == written.etag:
            return True
        if written.etag_kind is EtagKind.MD5:
            if source.etag_kind is EtagKind.MD5:
                return False
            ranges = [(1, 0, source.size - 1)] if source.size else []
            digests = [self._digest(self.ctx.source, source.key, start, end, source.etag) for _, start, end in ranges]
            return (digests[0].hex() if digests else hashlib.md5().hexdigest()) == written.etag
        parts = int(written.etag.rsplit("-", 1)[1])
        part_size = self.ctx.destination.first_part_size(written.key)
        if not part_size or -(-source.size // part_size) != parts:
            return False  # a layout we cannot reproduce: copy again
        digests = [self._digest(self.ctx.source, source.key, start, end, source.etag)
                   for _, start, end in part_ranges(source.size, part_size)]
        return composite_etag(digests) == written.etag

    def _head_source(self) -> ObjectHead:
        head = self.ctx.source.head(self.copy.source.key)
        if head is None:
            where = self.ctx.source.describe(self.copy.source.key)
            raise StoreError(ErrorKind.NOT_FOUND, f"object vanished after listing: {where}")
        self.copy.source_head = head
        return head

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
        if copy.upload is not None:
            upload, copy.upload = copy.upload, None
            try:
                ctx.destination.abort_multipart(upload.key, upload.upload_id)
            except StoreError as error:
                if error.kind is not ErrorKind.NOT_FOUND:
                    # Left announced-but-not-closed on purpose: the caller's janitor aborts it from the recorded ID.
                    log.error(kv(event="abort_upload_failed", shard=ctx.shard, key=upload.key,
                                 upload_id=upload.upload_id, error=error.message))
                    return
            log.info(kv(event="upload_aborted", shard=ctx.shard, key=upload.key, upload_id=upload.upload_id))
            self._announce_closed(upload)
        self._close_intent()
        if copy.wrote_destination and copy.state in (ObjectState.COPYING, ObjectState.VERIFYING):
            # A complete but unverified object must not stay: the invariant allows only untouched or verified.
            try:
                ctx.destination.delete(copy.destination_key)
                copy.wrote_destination = False
                log.warning(kv(event="unverified_copy_deleted", shard=ctx.shard, key=copy.destination_key))
            except StoreError as error:
                log.error(kv(event="unverified_copy_delete_failed", shard=ctx.shard, key=copy.destination_key,
                             error=error.message))

    def _close_intent(self) -> None:
        """Confirm by listing that no upload of ours is left on the key (abort any), then clear the intent.

        If the store cannot be listed, the intent stays recorded: the successor or the janitor closes it later.
        """
        ctx, intent = self.ctx, self.copy.intent
        if intent is None:
            return
        try:
            extra = close_intent(ctx.destination, intent)
        except StoreError as error:
            log.warning(kv(event="intent_left_recorded", shard=ctx.shard, key=intent.key, error=error.message))
            return
        if extra:
            log.warning(kv(event="extra_uploads_aborted", shard=ctx.shard, key=intent.key, count=len(extra)))
        self.copy.intent = None
        try:
            ctx.sink.on_intent_cleared(intent)
        except Exception as error:  # still recorded: a later cleanup finds nothing of ours and clears it then
            log.warning(kv(event="sink_intent_cleared_failed", shard=ctx.shard, key=intent.key, error=repr(error)))

    def _announce_closed(self, upload: OpenUpload) -> None:
        try:
            self.ctx.sink.on_upload_closed(upload)
        except Exception:
            log.exception(kv(event="sink_upload_closed_failed", shard=self.ctx.shard, key=upload.key))

    # -- copying ------------------------------------------------------------------------------------------------

    def _copy(self) -> None:
        ctx, copy = self.ctx, self.copy
        if copy.source.size <= ctx.options.multipart_threshold and not ctx.server_side:
            # Small object: one GET (its response describes the version read, so no HEAD) and one PUT.
            copy.strategy = "single"
            if self._copy_single():
                return
            copy.strategy = ""  # it grew past the threshold since listing: copy it as a large object
        head = self._head_source()
        if head.size <= ctx.options.multipart_threshold:
            if ctx.server_side:
                copy.strategy = "server_copy"
                ctx.writing()
                copy.written_etag = ctx.destination.copy_object(ctx.source, head.key, copy.destination_key, head.etag)
                copy.wrote_destination = True
            else:
                copy.strategy = "single"
                if not self._copy_single():
                    raise StoreError(ErrorKind.PRECONDITION, f"object keeps changing size while being copied: "
                                                             f"{ctx.source.describe(head.key)}")
            return
        copy.strategy = "server_part_copy" if ctx.server_side else "multipart"
        copy.part_size, copy.matched_layout = self._part_layout(head)
        self._copy_multipart(head)

    def _part_layout(self, head: ObjectHead) -> tuple[int, bool]:
        """(part size, matches the source's layout). A multipart source is copied with its own part size (from HEAD
        PartNumber=1), so the copy's ETag equals the source's and a re-run recognises it without reading anything;
        otherwise (single-part source, or parts too large to buffer) our part size."""
        ctx = self.ctx
        ours = choose_part_size(head.size, ctx.options.part_size)
        if head.etag_kind is not EtagKind.MULTIPART_MD5:
            return ours, False
        parts = int(head.etag.rsplit("-", 1)[1])
        size = ctx.source.first_part_size(head.key)
        limit = MAX_PART_SIZE if ctx.server_side else max(ctx.options.max_matched_part_size, ours)
        if size and (size >= MIN_PART_SIZE or parts == 1) and size <= limit and -(-head.size // size) == parts:
            return size, True
        return ours, False

    def _read_range(
        self, key: str, start: int | None, end: int | None, if_match: str | None, limit: int | None = None,
    ) -> tuple[bytes, bytes, ObjectHead] | None:
        """Download the object or a range chunk by chunk (abort checked between chunks).

        Returns (bytes, MD5 digest, head of the version read), or None if a whole-object read would exceed `limit`.
        A body that breaks mid-read is re-requested here, bounded, with jittered backoff: botocore retries failed
        requests but not a response body that dies while being read.
        """
        ctx = self.ctx
        attempts = ctx.options.part_read_attempts
        for attempt in range(1, attempts + 1):
            self._checkpoint("between_chunks", key)
            stream = ctx.source.open_read(key, start, end, if_match)
            expected = stream.head.size if start is None or end is None else end - start + 1
            if limit is not None and expected > limit:
                stream.close()
                return None
            try:
                chunks: list[bytes] = []
                received = 0
                digest = hashlib.md5()
                while True:
                    self._checkpoint("between_chunks", key)
                    chunk = stream.read(min(ctx.options.chunk_size, max(expected - received, 1)))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    received += len(chunk)
                    digest.update(chunk)
                if received != expected:
                    raise StoreError(ErrorKind.TRANSIENT, f"short read ({received} of {expected} bytes) on "
                                                          f"{ctx.source.describe(key)}")
                # join() briefly holds the chunks and the joined copy: up to 2 x part size per part thread.
                return b"".join(chunks), digest.digest(), stream.head
            except StoreError as error:
                if error.kind is not ErrorKind.TRANSIENT or attempt == attempts:
                    raise
                log.warning(kv(event="download_retry", shard=ctx.shard, key=key, attempt=attempt,
                               error=error.message))
                if ctx.abort.wait(min(8.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)):
                    raise Stopped("between_chunks") from error
            finally:
                stream.close()
        raise AssertionError("unreachable")

    def _copy_single(self) -> bool:
        """GET then PUT; False (nothing written) if the object is now larger than the multipart threshold."""
        ctx, copy = self.ctx, self.copy
        read = self._read_range(copy.source.key, None, None, None, limit=ctx.options.multipart_threshold)
        if read is None:
            return False
        body, digest, head = read
        copy.source_head = head
        copy.content_md5 = digest.hex()
        if head.etag_kind is EtagKind.MD5 and copy.content_md5 != head.etag:
            raise IntegrityError(f"bytes read do not match the source ETag {head.etag} "
                                 f"({ctx.source.describe(head.key)})")
        ctx.writing()
        copy.written_etag = ctx.destination.put(copy.destination_key, body, head.attributes, _b64(digest))
        copy.wrote_destination = True
        return True

    def _copy_multipart(self, head: ObjectHead) -> None:
        ctx, copy = self.ctx, self.copy
        # Exactly the source's attributes: nothing of ours is added to the copy.
        upload_id = self._create_upload(head.attributes)
        # The undo is registered where the resource is created: from here on any stop aborts this upload.
        copy.upload = OpenUpload(bucket=ctx.destination.bucket, key=copy.destination_key, upload_id=upload_id)
        ctx.checkpoint("after_create_multipart", head.key)
        log.info(kv(event="upload_opened", shard=ctx.shard, key=copy.destination_key, upload_id=upload_id))
        # The ID is announced before the first part (the intent already covers a crash before this line).
        ctx.sink.on_upload_opened(copy.upload)

        ranges = part_ranges(head.size, copy.part_size)
        pending: set[Future[None]] = set()
        try:
            next_index = 0
            while next_index < len(ranges) or pending:
                while next_index < len(ranges) and len(pending) < ctx.options.part_concurrency:
                    ctx.checkpoint("between_parts", head.key)
                    number, start, end = ranges[next_index]
                    pending.add(ctx.part_pool.submit(self._part_task(head, number, start, end)))
                    next_index += 1
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
        except BaseException:
            # Let parts already running reach their next checkpoint (one chunk) before the upload is aborted,
            # otherwise a part could land after AbortMultipartUpload and leave storage behind.
            self._parts_stop.set()
            for future in pending:
                future.cancel()
            self._drain(pending)
            raise
        parts = sorted(copy.part_etags.items())
        copy.written_etag = ctx.destination.complete_multipart(copy.destination_key, upload_id, parts)
        copy.wrote_destination = True
        closed, copy.upload = copy.upload, None
        log.info(kv(event="upload_completed", shard=ctx.shard, key=copy.destination_key, upload_id=upload_id))
        self._announce_closed(closed)
        # One listing (multipart objects are large, so it is cheap in proportion): nothing else of ours stays open.
        self._close_intent()

    def _create_upload(self, attributes: ObjectAttributes) -> str:
        """Record the intent, then CreateMultipartUpload, sent once per try (the backend does not retry it).

        A failed create may still have created an upload whose ID we never saw (the answer was lost): before trying
        again, every upload of ours on the key is aborted (listed by key, initiated after the intent), so at most
        one upload of ours exists at any time and none escapes. Tries are bounded, with jittered backoff.
        """
        ctx, copy = self.ctx, self.copy
        key = copy.destination_key
        intent = UploadIntent(key=key, since=dt.datetime.now(dt.UTC).replace(microsecond=0))
        try:
            ctx.sink.on_upload_intent(intent)
        except Exception as error:
            where = ctx.destination.describe(key)
            message = f"could not record the upload intent for {where}, upload not created: {error}"
            raise StoreError(ErrorKind.TRANSIENT, message) from error
        copy.intent = intent
        attempts = ctx.options.create_attempts
        for attempt in range(1, attempts + 1):
            ctx.writing()
            try:
                return ctx.destination.create_multipart(key, attributes)
            except StoreError as error:
                if error.kind is ErrorKind.PERMANENT or attempt == attempts:
                    raise
                log.warning(kv(event="create_upload_retry", shard=ctx.shard, key=key, attempt=attempt,
                               error=error.message))
            extra = close_intent(ctx.destination, intent)  # raises if it cannot tell: the object fails, intent kept
            if extra:
                log.warning(kv(event="lost_create_reconciled", shard=ctx.shard, key=key, aborted=len(extra)))
            if ctx.abort.wait(min(8.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)) or ctx.stop_worker.is_set():
                raise Stopped("after_create_multipart")
        raise AssertionError("unreachable")

    @staticmethod
    def _drain(pending: set[Future[None]]) -> None:
        for future in pending:
            if not future.cancelled():
                # Already stopping: the first error is the one reported.
                with contextlib.suppress(BaseException):
                    future.result()

    def _part_done(self, size: int) -> None:
        with self._parts_lock:
            self.copy.parts_bytes += size
        self.ctx.tracker.part_done(size)

    def _part_task(self, head: ObjectHead, number: int, start: int, end: int) -> Callable[[], None]:
        ctx, copy = self.ctx, self.copy
        upload = copy.upload
        assert upload is not None

        def run() -> None:
            if copy.strategy == "server_part_copy":
                etag = ctx.destination.upload_part_copy(
                    ctx.source, head.key, copy.destination_key, upload.upload_id, number, start, end, head.etag,
                )
                copy.part_etags[number] = etag
                self._part_done(end - start + 1)
                return
            read = self._read_range(head.key, start, end, head.etag)
            assert read is not None  # no limit on ranged reads
            body, digest, _ = read
            etag = ctx.destination.upload_part(copy.destination_key, upload.upload_id, number, body, _b64(digest))
            # No per-part ETag comparison: Content-MD5 already made the store reject a damaged part (BadDigest), and
            # under SSE-KMS a part's ETag is not its MD5. The whole object is checked in _verify.
            copy.part_digests[number] = digest
            copy.part_etags[number] = etag
            self._part_done(end - start + 1)

        return run

    # -- verification -------------------------------------------------------------------------------------------

    def _expected_etag(self, head: ObjectHead) -> str | None:
        """The ETag the destination must report, or None if only a re-read can tell."""
        copy = self.copy
        if copy.strategy == "single":
            return copy.content_md5
        if copy.strategy == "multipart":
            return composite_etag([copy.part_digests[n] for n in sorted(copy.part_digests)])
        if copy.strategy == "server_copy":
            return head.etag if head.etag_kind is not EtagKind.OPAQUE else copy.written_etag or None
        etags = [copy.part_etags[n] for n in sorted(copy.part_etags)]
        try:
            return composite_etag([bytes.fromhex(etag) for etag in etags])
        except ValueError:
            return copy.written_etag or None

    def _verify(self) -> None:
        ctx, copy = self.ctx, self.copy
        head = copy.source_head
        assert head is not None
        if copy.strategy == "single" and _is_md5(copy.written_etag):
            # The PUT carried Content-MD5 and its Content-Length, and the store answered with the same MD5: the
            # destination reported exactly our bytes, so no HEAD is needed.
            if copy.written_etag != copy.content_md5:
                raise IntegrityError(f"destination ETag {copy.written_etag}, expected {copy.content_md5}")
            return
        written = ctx.destination.head(copy.destination_key)
        if written is None:
            raise IntegrityError("the copy is not at the destination after writing it")
        if written.size != head.size:
            raise IntegrityError(f"size {written.size} at the destination, {head.size} at the source")
        expected = self._expected_etag(head)
        if written.etag_kind is not EtagKind.OPAQUE and expected is not None:
            if written.etag != expected:
                raise IntegrityError(f"destination ETag {written.etag}, expected {expected}")
            return
        if copy.strategy in ("single", "multipart"):
            self._verify_by_rereading(written)
        # Server-side copies into a store with opaque ETags: the store copied its own bytes; size is what we can check.

    def _verify_by_rereading(self, written: ObjectHead) -> None:
        """The destination's ETag is not an MD5: read the copy back and compare with what we hashed going in."""
        copy = self.copy
        if copy.strategy == "single":
            digest = self._read_destination(written, None, None)
            if digest.hex() != copy.content_md5:
                raise IntegrityError("content read back from the destination differs from what was sent")
            return
        for number, start, end in part_ranges(written.size, copy.part_size):
            digest = self._read_destination(written, start, end)
            if digest != copy.part_digests[number]:
                raise IntegrityError(f"part {number} read back from the destination differs from what was sent")

    def _read_destination(self, written: ObjectHead, start: int | None, end: int | None) -> bytes:
        return self._digest(self.ctx.destination, written.key, start, end, None)

    def _digest(self, store: ObjectStore, key: str, start: int | None, end: int | None, if_match: str | None) -> bytes:
        """MD5 of the object or an inclusive range, streamed (nothing buffered), abort checked between chunks."""
        stream = store.open_read(key, start, end, if_match)
        digest = hashlib.md5()
        try:
            while chunk := stream.read(self.ctx.options.chunk_size):
                self.ctx.checkpoint("between_chunks", self.copy.source.key)
                digest.update(chunk)
        finally:
            stream.close()
        return digest.digest()
