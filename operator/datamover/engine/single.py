"""Small objects in one request each way: one GET (which also describes the version read) and one PUT with its MD5."""

from __future__ import annotations

from datamover.backends.base import EtagKind
from datamover.engine.context import IntegrityError, ObjectCopy, RunContext, b64
from datamover.engine.download import read_range


def copy_single(ctx: RunContext, copy: ObjectCopy) -> bool:
    """GET then PUT; False (nothing written) if the object is now larger than the multipart threshold."""
    read = read_range(ctx, copy, copy.source.key, None, None, None, limit=ctx.options.multipart_threshold)
    if read is None:
        return False
    body, digest, head = read
    copy.source_head = head
    copy.content_md5 = digest.hex()
    if head.etag_kind is EtagKind.MD5 and copy.content_md5 != head.etag:
        raise IntegrityError(f"bytes read do not match the source ETag {head.etag} ({ctx.source.describe(head.key)})")
    ctx.writing()
    copy.written_etag = ctx.destination.put(copy.destination_key, body, head.attributes, b64(digest))
    copy.wrote_destination = True
    return True
