"""The migration engine: moves one shard of objects between two stores and stops cleanly; no Kubernetes in it.

What its callers (the worker, the operator's janitor, scripts) use; the state machines are in engine.fsm.
"""

from __future__ import annotations

from datamover.backends.base import OpenUpload
from datamover.engine.abort import CHECKPOINTS, AbortSignal
from datamover.engine.filters import ObjectFilter, check_pattern
from datamover.engine.fsm import WorkerState
from datamover.engine.janitor import Cleanup, UploadIntent, close_leftovers
from datamover.engine.migrate import migrate
from datamover.engine.options import MIN_BUFFER_BUDGET, MigrationOptions, MigrationResult, Outcome
from datamover.engine.progress import Amount, NullSink, Plan, Progress, ProgressSink
from datamover.engine.shards import KeyRange, LedgerStore, MemoryLedgerStore
from datamover.engine.throttle import Throttle

__all__ = [
    "CHECKPOINTS",
    "MIN_BUFFER_BUDGET",
    "AbortSignal",
    "Amount",
    "Cleanup",
    "KeyRange",
    "LedgerStore",
    "MemoryLedgerStore",
    "MigrationOptions",
    "MigrationResult",
    "NullSink",
    "ObjectFilter",
    "OpenUpload",
    "Outcome",
    "Plan",
    "Progress",
    "ProgressSink",
    "Throttle",
    "UploadIntent",
    "WorkerState",
    "check_pattern",
    "close_leftovers",
    "migrate",
]
