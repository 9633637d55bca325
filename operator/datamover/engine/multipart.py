"""Large objects in parts: the intent recorded before the create, the undo registered at the create, parts in the
shared pool, and the upload closed (completed or aborted) and confirmed before the object ends.

The parts themselves are written by a `PartWriter`: `stream_part` (read from the source, upload) here, or a
server-side part copy (server_copy.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait

from datamover.backends.base import (
    ErrorKind,
    EtagKind,
    MiB,
    ObjectAttributes,
    ObjectInfo,
    OpenUpload,
    PartLimits,
    StoreError,
)
from datamover.engine.context import ObjectCopy, RunContext, b64
from datamover.engine.download import read_range
from datamover.engine.fsm import kv
from datamover.engine.janitor import UploadIntent, close_intent

log = logging.getLogger("datamover.engine")

# Writes part `number` (bytes start..end of the source) into copy.upload and records its ETag in copy.part_etags.
PartWriter = Callable[[RunContext, ObjectCopy, ObjectInfo, int, int, int], None]


def choose_part_size(size: int, requested: int, limits: PartLimits) -> int:
    """The requested part size, grown (in whole MiB) until the object fits in the store's part count."""
    minimum = -(-size // limits.max_parts)
    if minimum <= requested:
        return requested
    return min(limits.max_part_size, -(-minimum // MiB) * MiB)


def part_ranges(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, first byte, last byte) for every part, numbered from 1."""
    return [(number, start, min(size, start + part_size) - 1)
            for number, start in enumerate(range(0, size, part_size), start=1)]


def part_layout(ctx: RunContext, info: ObjectInfo) -> tuple[int, bool]:
    """(part size, matches the source's layout). A multipart source is copied with its own part size (from HEAD
    PartNumber=1), so the copy's ETag equals the source's and a re-run recognises it without reading anything;
    otherwise (single-part source, a source that cannot tell its layout, or parts too large to buffer) our size."""
    limits = ctx.destination.capabilities.limits
    ours = choose_part_size(info.size, ctx.options.part_size, limits)
    if info.etag_kind is not EtagKind.MULTIPART_MD5 or not ctx.source.capabilities.part_layout:
        return ours, False
    parts = int(info.etag.rsplit("-", 1)[1])
    size = ctx.source.first_part_size(info.key)
    limit = limits.max_part_size if ctx.copier else max(ctx.options.max_matched_part_size, ours)
    if size and (size >= limits.min_part_size or parts == 1) and size <= limit and -(-info.size // size) == parts:
        return size, True
    return ours, False


def copy_in_parts(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo, write_part: PartWriter) -> None:
    """Create the upload with exactly the source's attributes, write every part, complete, confirm by listing."""
    # The undo is registered where the resource is created: from here on any stop aborts this upload.
    copy.upload = upload = _create_upload(ctx, copy, ctx.written_attributes(info.attributes, copy.source))
    ctx.checkpoint("after_create_multipart", info.key)
    log.info(kv(event="upload_opened", shard=ctx.shard, key=copy.destination_key, upload_id=upload.upload_id))
    # The ID is announced before the first part (the intent already covers a crash before this line).
    ctx.sink.on_upload_opened(copy.upload)
    copy.upload_announced = True

    ranges = part_ranges(info.size, copy.part_size)
    pending: set[Future[None]] = set()
    try:
        next_index = 0
        while next_index < len(ranges) or pending:
            while next_index < len(ranges) and len(pending) < ctx.options.part_concurrency:
                ctx.checkpoint("between_parts", info.key)
                number, start, end = ranges[next_index]
                pending.add(ctx.part_pool.submit(write_part, ctx, copy, info, number, start, end))
                next_index += 1
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
    except BaseException:
        # Let parts already running reach their next checkpoint (one chunk) before the upload is aborted,
        # otherwise a part could land after AbortMultipartUpload and leave storage behind.
        copy.parts_stop.set()
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                with contextlib.suppress(BaseException):  # already stopping: the first error is the one reported
                    future.result()
        raise
    parts = sorted(copy.part_etags.items())
    copy.written_etag = ctx.destination.complete_upload(upload, parts)
    copy.wrote_destination = True
    copy.upload, copy.upload_announced = None, False
    log.info(kv(event="upload_completed", shard=ctx.shard, key=copy.destination_key, upload_id=upload.upload_id))
    announce_closed(ctx, upload)
    # One listing (multipart objects are large, so it is cheap in proportion): nothing else of ours stays open.
    close_intent_of(ctx, copy)


def stream_part(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo, number: int, start: int, end: int) -> None:
    """Read one part's bytes from the source and upload them with their MD5."""
    assert copy.upload is not None
    with ctx.buffers.hold(end - start + 1, lambda: copy.checkpoint(ctx, "between_chunks", info.key)):
        read = read_range(ctx, copy, info.key, start, end, info.etag)
        assert read is not None  # no limit on ranged reads
        body, digest, _ = read
        etag = ctx.destination.upload_part(copy.upload, number, body, b64(digest))
    # No per-part ETag comparison: Content-MD5 already made the store reject a damaged part (BadDigest), and under
    # SSE-KMS a part's ETag is not its MD5. The whole object is checked by verify.
    copy.part_digests[number] = digest
    copy.part_etags[number] = etag
    copy.part_done(ctx, end - start + 1)


def _create_upload(ctx: RunContext, copy: ObjectCopy, attributes: ObjectAttributes) -> OpenUpload:
    """Record the intent, then create the upload, sent once per try (the backend does not retry it).

    A failed create may still have created an upload whose ID we never saw (the answer was lost): before trying
    again, every upload of ours on the key is aborted (listed by key, initiated after the intent), so at most one
    upload of ours exists at any time and none escapes. Tries are bounded, with jittered backoff.
    """
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
            return ctx.destination.create_upload(key, attributes)
        except StoreError as error:
            # Only a lost or failed answer is tried again: a refusal (a class the store lacks, too many tags) was
            # answered, so nothing was created, and asking again would get the same answer.
            if error.kind is not ErrorKind.TRANSIENT or attempt == attempts:
                raise
            log.warning(kv(event="create_upload_retry", shard=ctx.shard, key=key, attempt=attempt,
                           error=error.message))
        extra = close_intent(ctx.destination, intent)  # raises if it cannot tell: the object fails, intent kept
        if extra:
            log.warning(kv(event="lost_create_reconciled", shard=ctx.shard, key=key, aborted=len(extra)))
        ctx.backoff(attempt)
    raise AssertionError("unreachable")


def abort_upload_of(ctx: RunContext, copy: ObjectCopy) -> None:
    """Abort the object's open upload (if any), then confirm no upload of ours is left on its key."""
    if copy.upload is not None:
        upload, copy.upload = copy.upload, None
        announced, copy.upload_announced = copy.upload_announced, False
        try:
            ctx.destination.abort_upload(upload)
        except StoreError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                # Left announced-but-not-closed on purpose: the caller's janitor aborts it from the recorded ID.
                log.error(kv(event="abort_upload_failed", shard=ctx.shard, key=upload.key,
                             upload_id=upload.upload_id, error=error.message))
                return
        log.info(kv(event="upload_aborted", shard=ctx.shard, key=upload.key, upload_id=upload.upload_id))
        if announced:  # a stop between create and announce: the sink never heard of it (the intent did)
            announce_closed(ctx, upload)
    close_intent_of(ctx, copy)


def close_intent_of(ctx: RunContext, copy: ObjectCopy) -> None:
    """Confirm by listing that no upload of ours is left on the key (abort any), then clear the intent.

    If the store cannot be listed, the intent stays recorded: the successor or the janitor closes it later.
    """
    intent = copy.intent
    if intent is None:
        return
    try:
        extra = close_intent(ctx.destination, intent)
    except StoreError as error:
        log.warning(kv(event="intent_left_recorded", shard=ctx.shard, key=intent.key, error=error.message))
        return
    if extra:
        log.warning(kv(event="extra_uploads_aborted", shard=ctx.shard, key=intent.key, count=len(extra)))
    copy.intent = None
    try:
        ctx.sink.on_intent_cleared(intent)
    except Exception as error:  # still recorded: a later cleanup finds nothing of ours and clears it then
        log.warning(kv(event="sink_intent_cleared_failed", shard=ctx.shard, key=intent.key, error=repr(error)))


def announce_closed(ctx: RunContext, upload: OpenUpload) -> None:
    try:
        ctx.sink.on_upload_closed(upload)
    except Exception:
        log.exception(kv(event="sink_upload_closed_failed", shard=ctx.shard, key=upload.key))

