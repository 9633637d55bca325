"""The migration engine: moves one shard of objects between two stores and stops cleanly; no Kubernetes in it."""

from __future__ import annotations

from datamover.engine.api import (
    CHECKPOINTS,
    AbortSignal,
    MigrationOptions,
    MigrationResult,
    NullSink,
    OpenUpload,
    Outcome,
    Progress,
    ProgressSink,
)
from datamover.engine.fsm import OBJECT_TRANSITIONS, WORKER_TRANSITIONS, ObjectState, WorkerState
from datamover.engine.migrate import abort_uploads, migrate, shard_of

__all__ = [
    "CHECKPOINTS",
    "OBJECT_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "AbortSignal",
    "MigrationOptions",
    "MigrationResult",
    "NullSink",
    "ObjectState",
    "OpenUpload",
    "Outcome",
    "Progress",
    "ProgressSink",
    "WorkerState",
    "abort_uploads",
    "migrate",
    "shard_of",
]
