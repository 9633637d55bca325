"""What one migrate() call is told (options) and what it answers (result), besides the two stores."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from datamover.backends.base import S3_LIMITS, MiB
from datamover.engine.filters import ObjectFilter
from datamover.engine.progress import Plan, Progress
from datamover.engine.throttle import Throttle

# Options are checked against S3's limits, the ones every store we support shares; the part size of each object is
# then fitted to its destination's own limits (multipart.choose_part_size).
LIMITS = S3_LIMITS
# The smallest buffer budget: one part of the smallest size S3 allows.
MIN_BUFFER_BUDGET = LIMITS.min_part_size


@dataclass(frozen=True)
class MigrationOptions:
    """How to move: concurrency, part sizes, sharding and move-vs-copy."""

    remain_source: bool = True  # False means move: delete each source object once its copy is verified
    concurrency: int = 32  # objects in flight per worker (the MigrationJob's default; see docs/performance.md)
    part_size: int = 16 * MiB  # grown automatically so no object needs more than 10,000 parts
    multipart_threshold: int = 16 * MiB  # objects larger than this use multipart (or UploadPartCopy)
    part_concurrency: int = 8  # parts in flight per worker, shared by all objects (one object may use them all)
    # Bytes of whole-object and part buffers held at once per worker (engine.budget): the memory bound, whatever the
    # concurrency settings. The worker derives it from its container's memory limit.
    buffer_budget: int = 256 * MiB
    shard_index: int = 0  # this worker's index among the job's workers (its name in the shared listing ledger)
    shard_count: int = 1  # workers sharing the job's one listing (engine.shards)
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
    # Which objects of the shard move (spec.filter); the others are counted as excluded and never touched.
    filter: ObjectFilter = field(default_factory=ObjectFilter)
    # spec.destination.storageClass: the class of every copy; None keeps each source object's own class.
    storage_class: str | None = None
    # This worker's share of spec.throttle; the worker changes its limits live (None: no limit, no wrapper).
    throttle: Throttle | None = field(default=None, compare=False)
    # spec.mode plan: list and compare as a run would, write nothing, and answer what a run would do (engine.plan).
    plan: bool = False

    def __post_init__(self) -> None:
        if not LIMITS.min_part_size <= self.part_size <= LIMITS.max_part_size:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, not {self.part_size}")
        if not 0 <= self.multipart_threshold <= LIMITS.max_single_write:
            raise ValueError("multipart_threshold must be between 0 and 5 GiB")
        if self.concurrency < 1 or self.part_concurrency < 1:
            raise ValueError("concurrency and part_concurrency must be at least 1")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index must be in [0, {self.shard_count}), not {self.shard_index}")
        if self.buffer_budget < MIN_BUFFER_BUDGET:
            raise ValueError(f"buffer_budget must be at least {MIN_BUFFER_BUDGET} bytes, not {self.buffer_budget}")
        if self.chunk_size < 4096:
            raise ValueError("chunk_size must be at least 4 KiB")
        if self.part_read_attempts < 1 or self.create_attempts < 1:
            raise ValueError("part_read_attempts and create_attempts must be at least 1")
        if self.stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")


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
    # The store error that stopped the whole worker, if one did: its code (e.g. NoSuchBucket, AccessDenied,
    # Unreachable) and whether it was PERMANENT or TRANSIENT, so callers can say what is wrong without parsing text.
    fatal_code: str = ""
    fatal_kind: str = ""
    retained_keys: tuple[str, ...] = field(default=())  # moves whose source delete failed: in both places
    plan: Plan | None = None  # plan mode: what a run would do (with options.plan only)
