"""The worker and per-object state machines as data: the tables the engine executes and docs/engine.md renders.

A transition not in a table is a bug and raises; every transition taken is logged as one key=value line, so a
worker's log replays what happened to each object.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Mapping

log = logging.getLogger("datamover.engine.fsm")


class WorkerState(enum.StrEnum):
    """Where one worker (shard) is: what Progress.state carries and status.workers[i].state reports."""

    PENDING = "pending"
    RUNNING = "running"
    ABORTING = "aborting"  # abort requested: no new work, in-flight copies stopping, uploads being aborted
    FAILING = "failing"  # a permanent error: same draining as aborting, but the outcome will be failed
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in WORKER_TERMINAL


class ObjectState(enum.StrEnum):
    """Where one object is."""

    PENDING = "pending"
    CHECKING = "checking"  # HEAD source and destination: already identical?
    COPYING = "copying"
    VERIFYING = "verifying"
    DELETING_SOURCE = "deleting_source"  # only with remain_source=False, only after verification; not abortable
    MIGRATED = "migrated"
    SKIPPED = "skipped"  # already identical at the destination
    RETAINED = "retained"  # in both places: verified at the destination, but the source delete failed (reported)
    ABORTED = "aborted"  # untouched at the destination, still in the source
    FAILED = "failed"  # source still there; no upload left open and no unverified copy left at the destination


WORKER_TERMINAL = frozenset({WorkerState.SUCCEEDED, WorkerState.ABORTED, WorkerState.FAILED})
OBJECT_TERMINAL = frozenset({
    ObjectState.MIGRATED, ObjectState.SKIPPED, ObjectState.RETAINED, ObjectState.ABORTED, ObjectState.FAILED,
})

# (state, event) -> next state. The engine calls transition() with these events and nothing else moves a state.
WORKER_TRANSITIONS: Mapping[tuple[WorkerState, str], WorkerState] = {
    (WorkerState.PENDING, "start"): WorkerState.RUNNING,
    (WorkerState.PENDING, "abort"): WorkerState.ABORTED,
    (WorkerState.PENDING, "fatal_error"): WorkerState.FAILED,
    (WorkerState.RUNNING, "finished"): WorkerState.SUCCEEDED,
    (WorkerState.RUNNING, "finished_with_failures"): WorkerState.FAILED,
    (WorkerState.RUNNING, "abort"): WorkerState.ABORTING,
    (WorkerState.RUNNING, "fatal_error"): WorkerState.FAILING,
    (WorkerState.ABORTING, "fatal_error"): WorkerState.ABORTING,
    (WorkerState.ABORTING, "drained"): WorkerState.ABORTED,
    (WorkerState.FAILING, "abort"): WorkerState.FAILING,
    (WorkerState.FAILING, "drained"): WorkerState.FAILED,
}

OBJECT_TRANSITIONS: Mapping[tuple[ObjectState, str], ObjectState] = {
    (ObjectState.PENDING, "start"): ObjectState.CHECKING,
    (ObjectState.PENDING, "abort"): ObjectState.ABORTED,
    (ObjectState.CHECKING, "identical"): ObjectState.SKIPPED,
    (ObjectState.CHECKING, "identical_move"): ObjectState.DELETING_SOURCE,
    (ObjectState.CHECKING, "differs"): ObjectState.COPYING,
    (ObjectState.CHECKING, "abort"): ObjectState.ABORTED,
    (ObjectState.CHECKING, "error"): ObjectState.FAILED,
    (ObjectState.COPYING, "copied"): ObjectState.VERIFYING,
    (ObjectState.COPYING, "abort"): ObjectState.ABORTED,  # action: abort the multipart upload
    (ObjectState.COPYING, "error"): ObjectState.FAILED,  # action: abort the multipart upload
    (ObjectState.VERIFYING, "verified"): ObjectState.MIGRATED,
    (ObjectState.VERIFYING, "verified_move"): ObjectState.DELETING_SOURCE,
    (ObjectState.VERIFYING, "abort"): ObjectState.ABORTED,  # action: delete the unverified destination copy
    (ObjectState.VERIFYING, "error"): ObjectState.FAILED,  # action: delete the unverified destination copy
    # No abort here: a move is one unit per object, so once the copy is verified the delete (one request) is done.
    (ObjectState.DELETING_SOURCE, "source_deleted"): ObjectState.MIGRATED,
    (ObjectState.DELETING_SOURCE, "delete_failed"): ObjectState.RETAINED,  # both places; reported per key
}


class IllegalTransition(RuntimeError):
    """The code tried a move its table does not allow: a bug in the engine, never a user error."""


# Printable ASCII except space, '"', '=' and backslash: such a value is written bare, anything else as JSON. A regex,
# because this runs for every field of every log line (a character loop was a tenth of a small object's CPU).
_BARE = re.compile(r'[!#-<>-\[\]-~]+')


def _value(value: object) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)


def kv(**fields: object) -> str:
    """One structured log line: key=value pairs, values quoted (JSON) when they hold spaces, quotes or non-ASCII."""
    return " ".join(f"{name}={_value(value)}" for name, value in fields.items() if value is not None)


def next_worker_state(state: WorkerState, event: str) -> WorkerState:
    try:
        return WORKER_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"worker: no transition from {state} on {event}") from None


def next_object_state(state: ObjectState, event: str) -> ObjectState:
    try:
        return OBJECT_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"object: no transition from {state} on {event}") from None


def render_table(table: Mapping[tuple[enum.StrEnum, str], enum.StrEnum]) -> str:
    """The table as Markdown, in the table's own order; docs/engine.md embeds exactly this text."""
    lines = ["| from | event | to |", "|---|---|---|"]
    lines += [f"| {state} | {event} | {target} |" for (state, event), target in table.items()]
    return "\n".join(lines)
