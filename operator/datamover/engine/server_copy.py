"""Copies whose bytes never pass through us: the destination copies from the source (same service, same keys)."""

from __future__ import annotations

from datamover.backends.base import ObjectInfo
from datamover.engine.context import ObjectCopy, RunContext


def copy_whole(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo) -> None:
    """One server-side copy of the object, attributes included, pinned to the version stat'ed (If-Match)."""
    assert ctx.copier is not None
    ctx.writing()
    copy.written_etag = ctx.copier.copy_object(ctx.source, info.key, copy.destination_key, info.etag)
    copy.wrote_destination = True


def copy_part(ctx: RunContext, copy: ObjectCopy, info: ObjectInfo, number: int, start: int, end: int) -> None:
    """A multipart.PartWriter: the store copies bytes start..end of the source into part `number`."""
    assert ctx.copier is not None and copy.upload is not None
    copy.part_etags[number] = ctx.copier.copy_part(ctx.source, info.key, copy.upload, number, start, end, info.etag)
    copy.part_done(ctx, end - start + 1)
