"""Copies whose bytes never pass through us: the destination copies from the source (same service, same keys)."""

from __future__ import annotations

from datamover.backends.base import ObjectHead
from datamover.engine.context import ObjectCopy, RunContext


def copy_whole(ctx: RunContext, copy: ObjectCopy, head: ObjectHead) -> None:
    """One server-side copy of the object, attributes included, pinned to the version read (If-Match)."""
    ctx.writing()
    copy.written_etag = ctx.destination.copy_object(ctx.source, head.key, copy.destination_key, head.etag)
    copy.wrote_destination = True


def copy_part(ctx: RunContext, copy: ObjectCopy, head: ObjectHead, number: int, start: int, end: int) -> None:
    """A multipart.PartWriter: the store copies bytes start..end of the source into part `number`."""
    assert copy.upload is not None
    copy.part_etags[number] = ctx.destination.upload_part_copy(
        ctx.source, head.key, copy.destination_key, copy.upload.upload_id, number, start, end, head.etag,
    )
    copy.part_done(ctx, end - start + 1)
