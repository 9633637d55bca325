"""Proving the destination holds exactly the source: skip-identical before a copy and verification after it."""

from __future__ import annotations

import email.utils
import hashlib
import logging

from datamover.backends.base import ErrorKind, EtagKind, ObjectAttributes, ObjectInfo, ObjectSummary, StoreError
from datamover.engine.context import IntegrityError, ObjectCopy, RunContext
from datamover.engine.download import digest
from datamover.engine.fsm import kv
from datamover.engine.listing import DestinationHint
from datamover.engine.multipart import part_ranges

log = logging.getLogger("datamover.engine")


def composite_etag(part_digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the concatenated part MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def _http_date(value: str | None) -> object:
    """Expires compared as a time when it parses (stores format HTTP dates differently), else as text."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return value


def same_attributes(a: ObjectAttributes, b: ObjectAttributes) -> bool:
    """Content headers, user metadata, tags and storage class equal: an object that differs only here is copied
    again (exactness)."""
    return (
        (a.content_type, a.content_encoding, a.cache_control, a.content_disposition, a.content_language)
        == (b.content_type, b.content_encoding, b.cache_control, b.content_disposition, b.content_language)
        and _http_date(a.expires) == _http_date(b.expires)
        and dict(a.user_metadata) == dict(b.user_metadata)
        and dict(a.tags) == dict(b.tags)
        and a.storage_class == b.storage_class
    )


def stat_source(ctx: RunContext, copy: ObjectCopy) -> ObjectInfo:
    info = ctx.source.stat(copy.source.key)
    if info is None:
        raise StoreError(ErrorKind.NOT_FOUND, f"object vanished after listing: {ctx.source.describe(copy.source.key)}")
    copy.source_info = info
    return info


def already_at_destination(ctx: RunContext, copy: ObjectCopy, hint: DestinationHint) -> bool:
    """Skip-identical, decided exactly: same size, same content headers and user metadata, same bytes.

    Size alone never decides. Bytes are the same when the ETags are equal and comparable (MD5, or the same
    multipart composite); when the destination's ETag is a composite the source's is not (or a different
    layout), the source is hashed in the destination's part layout and compared with it. An object whose
    metadata differs is copied again. Costs no request when sizes differ, a HEAD on each side otherwise.
    """
    if hint.known:
        existing = hint.existing
        written = None
    else:
        written = ctx.destination.stat(copy.destination_key)
        existing = ObjectSummary(written.key, written.size, written.etag) if written else None
    copy.destination_existed = existing is not None
    if existing is None or existing.size != copy.source.size:
        return False
    if written is None:
        written = ctx.destination.stat(copy.destination_key)
        if written is None:
            return False
    source = stat_source(ctx, copy)
    if source.size != written.size:
        return False
    if not same_attributes(ctx.written_attributes(source.attributes, copy.source), written.attributes):
        log.info(kv(event="metadata_differs", shard=ctx.shard, key=copy.source.key))
        return False
    if not ctx.destination.stored_as_configured(written):
        log.info(kv(event="encryption_differs", shard=ctx.shard, key=copy.source.key))
        return False
    return _same_bytes(ctx, copy, source, written)


def _same_bytes(ctx: RunContext, copy: ObjectCopy, source: ObjectInfo, written: ObjectInfo) -> bool:
    # Whatever states the destination's content MD5 (an MD5 ETag, or a stored MD5 beside an opaque ETag: Azure,
    # GCS) is compared with the source's, or with the source's bytes hashed (a read costs less than a copy).
    if (written_md5 := written.known_md5) is not None:
        if (source_md5 := source.known_md5) is not None:
            return source_md5 == written_md5
        if ctx.copier is not None:
            # A multipart source copied in one CopyObject: hashing it would read every byte through us, copying it
            # again server-side reads none.
            return False
        whole = digest(ctx, copy, ctx.source, source.key, 0, source.size - 1, source.etag) if source.size else b""
        return (whole.hex() if whole else hashlib.md5().hexdigest()) == written_md5
    if written.etag_kind is not EtagKind.MULTIPART_MD5:
        return False  # an opaque ETag (SSE-KMS, SSE-C, own scheme) and no stored MD5 proves nothing: copy again
    if source.etag == written.etag:
        return True
    parts = int(written.etag.rsplit("-", 1)[1])
    part_size = ctx.destination.first_part_size(written.key) if ctx.destination.capabilities.part_layout else None
    if not part_size or -(-source.size // part_size) != parts:
        return False  # a layout we cannot reproduce: copy again
    digests = [digest(ctx, copy, ctx.source, source.key, start, end, source.etag)
               for _, start, end in part_ranges(source.size, part_size)]
    return composite_etag(digests) == written.etag


def _expected_etag(copy: ObjectCopy, info: ObjectInfo) -> str | None:
    """The ETag the destination must report, or None if only a re-read can tell."""
    if copy.strategy == "single":
        return copy.content_md5
    if copy.strategy == "multipart":
        return composite_etag([copy.part_digests[n] for n in sorted(copy.part_digests)])
    if copy.strategy == "server_copy":
        if info.etag_kind is EtagKind.MD5:
            return info.etag
        # A multipart (or encrypted) source copied in one request: the copy gets an ETag of its own, which the
        # destination must report (the store copied the version pinned by If-Match; its size is checked too).
        return copy.written_etag or None
    etags = [copy.part_etags[n] for n in sorted(copy.part_etags)]
    try:
        return composite_etag([bytes.fromhex(etag) for etag in etags])
    except ValueError:
        return copy.written_etag or None


def verify(ctx: RunContext, copy: ObjectCopy) -> None:
    """Raise IntegrityError unless the destination now holds exactly the bytes copied."""
    if copy.strategy == "server_copy" and copy.source_info is None:
        # Copied as listed, with no HEAD: the store answering with the source's very ETag is the proof.
        if copy.written_etag and copy.written_etag == copy.source.etag:
            return
        stat_source(ctx, copy)  # what the source's ETag proves (MD5, composite, encrypted) decides what to expect
    info = copy.source_info
    assert info is not None
    if copy.strategy == "single" and copy.written_etag:
        # The PUT carried Content-MD5 and its Content-Length, and the store answered with an MD5 (put returns its
        # ETag only when it is one): if it is ours, the destination reported exactly our bytes, so no stat is needed.
        if copy.written_etag != copy.content_md5:
            raise IntegrityError(f"destination ETag {copy.written_etag}, expected {copy.content_md5}")
        return
    written = ctx.destination.stat(copy.destination_key)
    if written is None:
        raise IntegrityError("the copy is not at the destination after writing it")
    if written.size != info.size:
        raise IntegrityError(f"size {written.size} at the destination, {info.size} at the source")
    if copy.strategy == "single" and written.content_md5 is not None:
        # A store that keeps the MD5 it checked the body against (Azure's Content-MD5, GCS's md5Hash).
        if written.content_md5 != copy.content_md5:
            raise IntegrityError(f"destination content MD5 {written.content_md5}, expected {copy.content_md5}")
        return
    expected = _expected_etag(copy, info)
    if written.etag_kind is not EtagKind.OPAQUE and expected is not None:
        if written.etag != expected:
            raise IntegrityError(f"destination ETag {written.etag}, expected {expected}")
        return
    if copy.strategy in ("single", "multipart"):
        _verify_by_rereading(ctx, copy, written)
    # Server-side copies into a store with opaque ETags: the store copied its own bytes; size is what we can check.


def _verify_by_rereading(ctx: RunContext, copy: ObjectCopy, written: ObjectInfo) -> None:
    """The destination's ETag is not an MD5: read the copy back and compare with what we hashed going in."""
    if copy.strategy == "single":
        if digest(ctx, copy, ctx.destination, written.key, None, None, None).hex() != copy.content_md5:
            raise IntegrityError("content read back from the destination differs from what was sent")
        return
    for number, start, end in part_ranges(written.size, copy.part_size):
        if digest(ctx, copy, ctx.destination, written.key, start, end, None) != copy.part_digests[number]:
            raise IntegrityError(f"part {number} read back from the destination differs from what was sent")
