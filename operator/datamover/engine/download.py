"""Reading bytes off a store chunk by chunk, so abort never waits for a whole object and a broken body is re-read."""

from __future__ import annotations

import hashlib
import logging

from datamover.backends.base import ErrorKind, ObjectInfo, ObjectStore, StoreError
from datamover.engine.context import ObjectCopy, RunContext
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")


def read_range(
    ctx: RunContext, copy: ObjectCopy, key: str, start: int | None, end: int | None, if_match: str | None,
    limit: int | None = None,
) -> tuple[bytes, bytes, ObjectInfo] | None:
    """Download the source object or a range (abort checked between chunks).

    Returns (bytes, MD5 digest, info of the version read), or None if a whole-object read would exceed `limit`.
    A body that breaks mid-read is re-requested here, bounded, with jittered backoff: botocore retries failed
    requests but not a response body that dies while being read.
    """
    attempts = ctx.options.part_read_attempts
    for attempt in range(1, attempts + 1):
        copy.checkpoint(ctx, "between_chunks", key)
        stream = ctx.source.open_read(key, start, end, if_match)
        expected = stream.info.size if start is None or end is None else end - start + 1
        if limit is not None and expected > limit:
            stream.close()
            return None
        try:
            chunks: list[bytes] = []
            received = 0
            digest = hashlib.md5()
            while True:
                copy.checkpoint(ctx, "between_chunks", key)
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
            return b"".join(chunks), digest.digest(), stream.info
        except StoreError as error:
            if error.kind is not ErrorKind.TRANSIENT or attempt == attempts:
                raise
            log.warning(kv(event="download_retry", shard=ctx.shard, key=key, attempt=attempt, error=error.message))
        finally:
            stream.close()
        ctx.backoff(attempt)
    raise AssertionError("unreachable")


def digest(
    ctx: RunContext, copy: ObjectCopy, store: ObjectStore, key: str, start: int | None, end: int | None,
    if_match: str | None,
) -> bytes:
    """MD5 of an object or an inclusive range, streamed (nothing buffered), abort checked between chunks."""
    stream = store.open_read(key, start, end, if_match)
    md5 = hashlib.md5()
    try:
        while chunk := stream.read(ctx.options.chunk_size):
            ctx.checkpoint("between_chunks", copy.source.key)
            md5.update(chunk)
    finally:
        stream.close()
    return md5.digest()
