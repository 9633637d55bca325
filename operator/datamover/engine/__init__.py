"""The migration engine: moves one shard of objects between two stores and stops cleanly; no Kubernetes in it."""

from __future__ import annotations

from datamover.engine.api import (
    CHECKPOINTS,
    CLOCK_SKEW_ALLOWANCE,
    AbortSignal,
    IntentCleanup,
    MigrationOptions,
    MigrationResult,
    NullSink,
    OpenUpload,
    Outcome,
    Progress,
    ProgressSink,
    UploadIntent,
)
from datamover.engine.cleanup import close_intended_uploads
from datamover.engine.fsm import OBJECT_TRANSITIONS, WORKER_TRANSITIONS, ObjectState, WorkerState
from datamover.engine.migrate import abort_uploads, migrate, shard_of

__all__ = [
    "CHECKPOINTS",
    "CLOCK_SKEW_ALLOWANCE",
    "OBJECT_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "AbortSignal",
    "IntentCleanup",
    "MigrationOptions",
    "MigrationResult",
    "NullSink",
    "ObjectState",
    "OpenUpload",
    "Outcome",
    "Progress",
    "ProgressSink",
    "UploadIntent",
    "WorkerState",
    "abort_uploads",
    "close_intended_uploads",
    "migrate",
    "shard_of",
]
