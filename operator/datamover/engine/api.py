"""The engine's public vocabulary: options, the abort signal, progress snapshots, the sink protocol and results.

These are the types the worker (and the operator's janitor) import; they hold no logic beyond validation and the
thread-safe abort flag, so they can be read as the contract.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

MiB = 1024 * 1024
GiB = 1024 * MiB

# S3's limits: parts of at least 5 MiB (except the last), at most 10,000 parts, single PUT/copy of at most 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_SINGLE_REQUEST = 5 * GiB

# Places where the engine asks "was abort requested?". Tests inject an abort at each by name.
CHECKPOINTS: tuple[str, ...] = (
    "before_list_page",  # before requesting the next page of the source listing
    "before_object",  # before starting work on one object
    "after_create_multipart",  # right after CreateMultipartUpload returned, before its ID is announced to the sink
    "between_parts",  # before starting the next part of a multipart copy
    "between_chunks",  # before reading the next chunk of a download, so abort never waits for a whole object
    # before deleting a verified source object (remain_source=False). Abort is NOT honoured here: a move is one unit
    # per object, so the delete (one request) is finished; the hook still runs, so tests can crash the worker here.
    "before_delete_source",
)
# Checkpoints where the hook runs but an abort does not stop the object.
NOT_ABORTABLE: frozenset[str] = frozenset({"before_delete_source"})

# An upload of ours is one on an intended key initiated at or after intent.since minus this: `since` is the worker's
# clock (rounded down to the second when recorded), `initiated` the store's, and the two may disagree by this much.
# Five minutes is the clock skew S3 itself tolerates in signed requests (RequestTimeTooSkewed), so a worker whose
# requests are accepted at all is within it.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

CheckpointHook = Callable[[str, "str | None"], None]


class AbortSignal:
    """A thread-safe "please stop" flag, set once from any thread (watch thread, SIGTERM handler, test hook).

    `on_checkpoint(name, key)` is called every time the engine passes a checkpoint, before the flag is read; a test
    can call `request()` from it to stop exactly there.
    """

    def __init__(self, on_checkpoint: CheckpointHook | None = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._on_checkpoint = on_checkpoint

    def request(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        return self._reason

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on abort; returns whether abort was requested."""
        return self._event.wait(timeout)

    def checkpoint(self, name: str, key: str | None = None) -> bool:
        """Called by the engine at a named checkpoint; returns True if work should stop here."""
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}")
        if self._on_checkpoint is not None:
            self._on_checkpoint(name, key)
        return self.requested

    @classmethod
    def at_checkpoint(cls, name: str, after: int = 0,
                      counts: Callable[[str | None], bool] = lambda key: True) -> AbortSignal:
        """A signal that requests abort the (after+1)-th time the engine reaches checkpoint `name` (for tests);
        `counts(key)` narrows which hits count (e.g. only large objects)."""
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}")
        hits = 0
        lock = threading.Lock()

        def hook(checkpoint: str, key: str | None) -> None:
            nonlocal hits
            if checkpoint != name or not counts(key):
                return
            with lock:
                hits += 1
                fire = hits == after + 1
            if fire:
                signal.request(f"test: abort at {name} #{after + 1} (key={key!r})")

        signal = cls(on_checkpoint=hook)
        return signal


@dataclass(frozen=True)
class MigrationOptions:
    """How to move: concurrency, part sizes, sharding and move-vs-copy."""

    remain_source: bool = True  # False means move: delete each source object once its copy is verified
    concurrency: int = 4  # objects in flight per worker
    part_size: int = 16 * MiB  # grown automatically so no object needs more than 10,000 parts
    multipart_threshold: int = 16 * MiB  # objects larger than this use multipart (or UploadPartCopy)
    part_concurrency: int = 4  # parts in flight per worker, shared by all objects
    shard_index: int = 0  # this worker takes keys whose stable hash mod shard_count equals shard_index
    shard_count: int = 1
    chunk_size: int = 1 * MiB  # download read size: abort is checked between chunks
    progress_interval: float = 1.0  # seconds between throttled progress snapshots
    part_read_attempts: int = 3  # re-requests of a part whose download broke mid-body (botocore cannot retry that)
    create_attempts: int = 4  # CreateMultipartUpload tries (each failure reconciled by listing the key's uploads)
    # A multipart source is copied in its own part layout (so the copy's ETag equals the source's) unless its parts
    # are larger than this: each part is buffered in memory, part_concurrency at a time.
    max_matched_part_size: int = 128 * MiB
    # No answer from a store for this long while requests wait: the worker fails, naming the endpoint
    # (spec.stallTimeoutSeconds). The detector fires after 3/4 of it; requests' own timeouts cover the rest.
    stall_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, not {self.part_size}")
        if not 0 <= self.multipart_threshold <= MAX_SINGLE_REQUEST:
            raise ValueError("multipart_threshold must be between 0 and 5 GiB")
        if self.concurrency < 1 or self.part_concurrency < 1:
            raise ValueError("concurrency and part_concurrency must be at least 1")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index must be in [0, {self.shard_count}), not {self.shard_index}")
        if self.chunk_size < 4096:
            raise ValueError("chunk_size must be at least 4 KiB")
        if self.part_read_attempts < 1 or self.create_attempts < 1:
            raise ValueError("part_read_attempts and create_attempts must be at least 1")
        if self.stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload at the destination: announced when created and when closed, so a crash can be cleaned."""

    bucket: str
    key: str
    upload_id: str


@dataclass(frozen=True)
class UploadIntent:
    """"A multipart upload may be created on `key` from `since` on": recorded durably BEFORE the create, so whoever
    cleans up after a crash (the worker's successor, the operator's janitor) finds every upload of ours, including one
    whose create response was lost, by listing the key's uploads (see close_intended_uploads)."""

    key: str
    since: dt.datetime  # aware UTC, whole seconds (the status record's precision)

    def __post_init__(self) -> None:
        if self.since.tzinfo is None:
            raise ValueError("UploadIntent.since must be timezone-aware (UTC)")


@dataclass(frozen=True)
class Progress:
    """One snapshot of a worker's progress; totals grow as listing discovers keys of this shard."""

    state: str
    objects_total: int = 0
    objects_migrated: int = 0
    objects_skipped: int = 0
    objects_failed: int = 0
    bytes_total: int = 0
    bytes_migrated: int = 0
    in_flight: tuple[str, ...] = ()
    listing_done: bool = False
    objects_aborted: int = 0  # stopped by abort before anything reached the destination
    objects_retained: int = 0  # in both places: verified at the destination, but the source delete failed
    bytes_skipped: int = 0
    bytes_in_progress: int = 0  # bytes of parts already uploaded for large objects still in flight (liveness)
    destination_written: bool = False  # a write request (PUT, CreateMultipartUpload, CopyObject) has been started
    retained_keys: tuple[str, ...] = ()  # the first MAX_REPORTED_KEYS source keys now in both places


class ProgressSink(Protocol):
    """Where progress goes. Called from engine threads: implementations must be thread-safe and quick."""

    def on_progress(self, progress: Progress) -> None: ...

    def on_upload_intent(self, intent: UploadIntent) -> None:
        """Durably record the intent before the upload is created; raise if it cannot be recorded (the engine then
        does not create the upload and that object fails as a transient error)."""

    def on_intent_cleared(self, intent: UploadIntent) -> None:
        """No upload of ours is left on intent.key (completed or aborted, and confirmed by listing): forget it."""

    def on_upload_opened(self, upload: OpenUpload) -> None: ...

    def on_upload_closed(self, upload: OpenUpload) -> None: ...


class NullSink:
    """A sink that drops everything (handy in scripts)."""

    def on_progress(self, progress: Progress) -> None:
        pass

    def on_upload_intent(self, intent: UploadIntent) -> None:
        pass

    def on_intent_cleared(self, intent: UploadIntent) -> None:
        pass

    def on_upload_opened(self, upload: OpenUpload) -> None:
        pass

    def on_upload_closed(self, upload: OpenUpload) -> None:
        pass


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(frozen=True)
class MigrationResult:
    """How a migrate() call ended; `error` names endpoint, bucket and key, never a secret."""

    outcome: Outcome
    progress: Progress
    error: str | None = None
    failed_keys: tuple[str, ...] = field(default=())
    retained_keys: tuple[str, ...] = field(default=())  # moves whose source delete failed: in both places


@dataclass(frozen=True)
class IntentCleanup:
    """What close_intended_uploads did: `resolved` intents have no upload of ours open on their key any more (the
    caller may forget them); `unresolved` ones could not be checked or closed (keep them recorded, retry later)."""

    resolved: tuple[UploadIntent, ...] = ()
    unresolved: tuple[tuple[UploadIntent, str], ...] = ()  # (intent, error naming endpoint, bucket and key)
    aborted: tuple[OpenUpload, ...] = ()  # uploads of ours that were found open and aborted
