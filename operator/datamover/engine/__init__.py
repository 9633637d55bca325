"""The migration engine: moves one shard of objects between two stores and stops cleanly; no Kubernetes in it."""

from __future__ import annotations

from datamover.backends.base import OpenUpload
from datamover.engine.abort import CHECKPOINTS, AbortSignal
from datamover.engine.fsm import OBJECT_TRANSITIONS, WORKER_TRANSITIONS, ObjectState, WorkerState
from datamover.engine.janitor import CLOCK_SKEW_ALLOWANCE, Cleanup, UploadIntent, close_leftovers
from datamover.engine.migrate import migrate, shard_of
from datamover.engine.options import MigrationOptions, MigrationResult, Outcome
from datamover.engine.progress import NullSink, Progress, ProgressSink

__all__ = [
    "CHECKPOINTS",
    "CLOCK_SKEW_ALLOWANCE",
    "OBJECT_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "AbortSignal",
    "Cleanup",
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
    "close_leftovers",
    "migrate",
    "shard_of",
]
