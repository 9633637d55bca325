"""Copies whose bytes never pass through us: the destination copies from the source (same service, same keys)."""

from __future__ import annotations

from datamover.backends.base import BetweenRequests, ErrorKind, ObjectInfo, StoreError
from datamover.engine import verify
from datamover.engine.context import ObjectCopy, RunContext


def copy_listed(ctx: RunContext, copy: ObjectCopy) -> None:
    """One server-side copy pinned to the ETag the listing saw, with no HEAD first: the attributes travel with the
    copy (the store reads them itself), and an answer that carries the source's ETag proves the copy (verify.py).
    An object overwritten since the listing is stat'ed and copied as it is now, as a GET would read it."""
    assert ctx.copier is not None
    ctx.writing()
    try:
        copy.written_etag = ctx.copier.copy_object(
            ctx.source, copy.source.key, copy.destination_key, copy.source.etag,
            ctx.options.storage_class or copy.source.storage_class, _between_requests(ctx, copy),
        )
    except StoreError as error:
        if error.kind is not ErrorKind.PRECONDITION:
            raise
        copy_whole(ctx, copy, verify.stat_source(ctx, copy))
        return
    copy.wrote_destination = True


def _between_requests(ctx: RunContext, copy: ObjectCopy) -> BetweenRequests:
    """A copy that takes several requests (a GCS rewrite of a large object, a call per chunk of bytes the service
    copied) stops at the `between_chunks` checkpoint before each further one, as a download does between its chunks:
    abort waits for at most one request. A copy stopped there has written nothing (the service makes the object only
    when its last request completes), so there is nothing to undo."""
    return lambda: ctx.checkpoint("between_chunks", copy.source.key)


def copy_whole(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo) -> None:
    """One server-side copy of the object, attributes included, pinned to the version stat'ed (If-Match)."""
    assert ctx.copier is not None
    ctx.writing()
    copy.written_etag = ctx.copier.copy_object(ctx.source, info.key, copy.destination_key, info.etag,
                                               ctx.written_attributes(info.attributes, copy.source).storage_class,
                                               _between_requests(ctx, copy))
    copy.wrote_destination = True


def copy_part(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo, number: int, start: int, end: int) -> None:
    """A multipart.PartWriter: the store copies bytes start..end of the source into part `number`."""
    assert ctx.copier is not None and copy.upload is not None
    copy.part_etags[number] = ctx.copier.copy_part(ctx.source, info.key, copy.upload, number, start, end, info.etag)
    copy.part_done(ctx, end - start + 1)
