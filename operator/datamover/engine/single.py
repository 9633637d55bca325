"""Small objects in one request each way: one GET (which also describes the version read) and one PUT with its MD5."""

from __future__ import annotations

from datamover.backends.base import EtagKind
from datamover.engine.context import IntegrityError, ObjectCopy, RunContext, b64
from datamover.engine.download import read_range


def copy_single(ctx: RunContext, copy: ObjectCopy) -> bool:
    """GET then PUT; False (nothing written) if the object is now larger than the multipart threshold."""
    # Held until the PUT is sent: the listed size, or the threshold if the object grew (it is then not read whole).
    held = min(copy.source.size, ctx.options.multipart_threshold)
    with ctx.buffers.hold(held, lambda: copy.checkpoint(ctx, "between_chunks", copy.source.key)):
        return _copy_held(ctx, copy)


def _copy_held(ctx: RunContext, copy: ObjectCopy) -> bool:
    read = read_range(ctx, copy, copy.source.key, None, None, None, limit=ctx.options.multipart_threshold)
    if read is None:
        return False
    body, digest, info = read
    copy.source_info = info
    copy.content_md5 = digest.hex()
    if info.etag_kind is EtagKind.MD5 and copy.content_md5 != info.etag:
        raise IntegrityError(f"bytes read do not match the source ETag {info.etag} ({ctx.source.describe(info.key)})")
    ctx.writing()
    attributes = ctx.written_attributes(info.attributes, copy.source)
    copy.written_etag = ctx.destination.put(copy.destination_key, body, attributes, b64(digest))
    copy.wrote_destination = True
    return True
