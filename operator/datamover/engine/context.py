"""What every copy mechanism shares: the run's context, one object's whole copy state, and how a stop is raised.

The whole state of one object's copy lives in `ObjectCopy`, so a reader (or a debugger) sees in one place what has
been done and what must be undone if the copy stops; the mechanisms (single.py, multipart.py, server_copy.py) and
verify.py change it, mover.py moves its state through the object table.
"""

from __future__ import annotations

import base64
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from datamover.backends.base import (
    ObjectAttributes,
    ObjectInfo,
    ObjectStore,
    ObjectSummary,
    OpenUpload,
    ServerSideCopy,
    StoreError,
)
from datamover.engine.abort import AbortSignal
from datamover.engine.budget import BufferBudget
from datamover.engine.fsm import ObjectState
from datamover.engine.janitor import UploadIntent
from datamover.engine.options import MigrationOptions
from datamover.engine.progress import ProgressSink, ProgressTracker

if TYPE_CHECKING:
    from datamover.engine.report import ReportWriter


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
    part_pool: ThreadPoolExecutor  # shared by all objects: bounds parts in flight per worker
    buffers: BufferBudget  # shared by all objects and parts: bounds the bytes they hold in memory
    shard: str  # "i/N", carried on every log line
    copier: ServerSideCopy | None  # the destination, if it can copy from the source without the bytes passing us
    stop_worker: threading.Event = field(default_factory=threading.Event)  # a permanent error: stop like an abort
    fatal_error: StoreError | None = None
    report: ReportWriter | None = None  # spec.report: one line per object, written off the copy path
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

    def written_attributes(self, source: ObjectAttributes, listed: ObjectSummary) -> ObjectAttributes:
        """What a copy of the object `listed` with the `source` attributes must carry: the same, in the job's
        storage class, else its own (the listing's when a read does not tell it: Azure's Get Blob has no tier)."""
        storage_class = self.options.storage_class or source.storage_class or listed.storage_class
        return source if storage_class == source.storage_class else replace(source, storage_class=storage_class)

    def destination_key(self, source_key: str) -> str:
        return self.destination.prefix + source_key[len(self.source.prefix):]

    def backoff(self, attempt: int) -> None:
        """Sleep before another try (jittered exponential), raising Stopped if abort or a fatal error comes."""
        if self.abort.wait(min(8.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)) or self.stop_worker.is_set():
            raise Stopped("backoff")


@dataclass
class ObjectCopy:
    """Everything about one object's migration. Only ObjectMover moves `state`, and only through the table."""

    source: ObjectSummary  # the key as listing saw it (size and ETag at listing time)
    destination_key: str  # the source key re-rooted from the source prefix to the destination prefix
    state: ObjectState = ObjectState.PENDING  # position in OBJECT_TRANSITIONS
    source_info: ObjectInfo | None = None  # the version copied: from the read itself, or a stat (pins If-Match)
    destination_existed: bool = False  # the key was at the destination (with other content) before we wrote it
    strategy: str = ""  # "single", "multipart", "server_copy" or "server_part_copy" once chosen
    part_size: int = 0  # bytes per part for the multipart strategies
    upload: OpenUpload | None = None  # the upload in parts while it is open; aborted on any stop
    upload_announced: bool = False  # the sink was told it opened (so it is told it closed)
    intent: UploadIntent | None = None  # recorded before the create; cleared once no upload of ours is on the key
    matched_layout: bool = False  # parts laid out as the source's, so the copy's ETag equals the source's
    part_digests: dict[int, bytes] = field(default_factory=dict)  # part number -> MD5 of the bytes we sent
    part_etags: dict[int, str] = field(default_factory=dict)  # part number -> ETag the destination returned
    parts_bytes: int = 0  # bytes of parts uploaded so far (reported as bytes_in_progress until the object ends)
    content_md5: str = ""  # hex MD5 of the whole object, when we streamed it in one request
    written_etag: str = ""  # what the destination said the finished object's ETag is
    wrote_destination: bool = False  # a complete object now sits at destination_key (verified or not yet)
    error: str | None = None  # why the object failed, naming endpoint, bucket and key
    error_code: str = ""  # the store's error code (NoSuchKey, AccessDenied...) or our own name for the failure
    # Set when one part of this object failed or stopped, so its sibling parts stop at their next chunk.
    parts_stop: threading.Event = field(default_factory=threading.Event)
    parts_lock: threading.Lock = field(default_factory=threading.Lock)

    def checkpoint(self, ctx: RunContext, name: str, key: str) -> None:
        """The run's checkpoint, and also stop if a sibling part of this object failed or stopped."""
        ctx.checkpoint(name, key)
        if self.parts_stop.is_set():
            raise Stopped(name)

    def part_done(self, ctx: RunContext, size: int) -> None:
        with self.parts_lock:
            self.parts_bytes += size
        ctx.tracker.part_done(size)


def b64(digest: bytes) -> str:
    """A digest as Content-MD5 wants it."""
    return base64.b64encode(digest).decode("ascii")
