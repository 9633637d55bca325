"""The transition tables: executed as written, rendered into docs/engine.md, and logged one line per move."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from datamover.engine.fsm import (
    OBJECT_TERMINAL,
    OBJECT_TRANSITIONS,
    WORKER_TERMINAL,
    WORKER_TRANSITIONS,
    IllegalTransition,
    ObjectState,
    WorkerState,
    kv,
    next_object_state,
    next_worker_state,
    render_table,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "engine.md"


def _doc_block(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- BEGIN {name} -->\n(.*?)\n<!-- END {name} -->", text, re.DOTALL)
    assert match, f"docs/engine.md has no {name} block"
    return match.group(1).strip()


def test_docs_show_the_worker_table_the_code_executes() -> None:
    assert _doc_block("worker-transitions") == render_table(WORKER_TRANSITIONS)


def test_docs_show_the_object_table_the_code_executes() -> None:
    assert _doc_block("object-transitions") == render_table(OBJECT_TRANSITIONS)


def test_terminal_states_have_no_way_out() -> None:
    assert not [key for key in WORKER_TRANSITIONS if key[0] in WORKER_TERMINAL]
    assert not [key for key in OBJECT_TRANSITIONS if key[0] in OBJECT_TERMINAL]


def _reachable(start: object, table: dict[tuple[object, str], object]) -> set[object]:
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (source, _), target in table.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def test_every_state_is_reachable_and_every_path_can_end() -> None:
    assert _reachable(WorkerState.PENDING, dict(WORKER_TRANSITIONS)) == set(WorkerState)
    assert _reachable(ObjectState.PENDING, dict(OBJECT_TRANSITIONS)) == set(ObjectState)
    for state in set(ObjectState) - OBJECT_TERMINAL:
        assert _reachable(state, dict(OBJECT_TRANSITIONS)) & OBJECT_TERMINAL, state


def test_every_non_terminal_object_state_but_deleting_source_can_be_aborted() -> None:
    for state in set(ObjectState) - OBJECT_TERMINAL - {ObjectState.DELETING_SOURCE}:
        assert (state, "abort") in OBJECT_TRANSITIONS, state


def test_a_move_is_one_unit_once_verified() -> None:
    # Abort never stops a verified object before its source delete; a failed delete is "retained" (both places).
    assert (ObjectState.DELETING_SOURCE, "abort") not in OBJECT_TRANSITIONS
    assert {event for (state, event) in OBJECT_TRANSITIONS if state is ObjectState.DELETING_SOURCE} == {
        "source_deleted", "delete_failed"}
    assert OBJECT_TRANSITIONS[(ObjectState.DELETING_SOURCE, "delete_failed")] is ObjectState.RETAINED
    assert {source for (source, _), target in OBJECT_TRANSITIONS.items() if target is ObjectState.RETAINED} == {
        ObjectState.DELETING_SOURCE}


def test_abort_never_deletes_an_unverified_source() -> None:
    # The only way into deleting_source is a verified (or already identical) copy.
    sources = {source for (source, _), target in OBJECT_TRANSITIONS.items() if target is ObjectState.DELETING_SOURCE}
    events = {event for (_, event), target in OBJECT_TRANSITIONS.items() if target is ObjectState.DELETING_SOURCE}
    assert sources == {ObjectState.CHECKING, ObjectState.VERIFYING}
    assert events == {"identical_move", "verified_move"}


def test_a_move_outside_the_table_raises() -> None:
    assert next_worker_state(WorkerState.RUNNING, "abort") is WorkerState.ABORTING
    assert next_object_state(ObjectState.COPYING, "copied") is ObjectState.VERIFYING
    with pytest.raises(IllegalTransition):
        next_object_state(ObjectState.COPYING, "source_deleted")
    with pytest.raises(IllegalTransition):
        next_worker_state(WorkerState.SUCCEEDED, "start")


def test_log_lines_are_key_value_and_quote_awkward_keys() -> None:
    assert kv(event="transition", key="plain/key.txt") == "event=transition key=plain/key.txt"
    assert kv(key="a b=c") == 'key="a b=c"'
    assert kv(key="ünï/cødé") == 'key="\\u00fcn\\u00ef/c\\u00f8d\\u00e9"'
    assert kv(key="x", error=None) == "key=x"
    assert kv(key="") == 'key=""' and kv(key='say "hi"') == 'key="say \\"hi\\""' and kv(key="a\\b") == 'key="a\\\\b"'
    assert kv(key="tab\there") == 'key="tab\\there"' and kv(key="x\x7f") == 'key="x\\u007f"'


def test_every_log_value_reads_back_as_written() -> None:
    """A reader splits a line on spaces and '=' and JSON-decodes quoted values: every value must come back."""
    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    alphabet = [chr(code) for code in range(0, 160)] + ["é", "日", "\u2028"]
    for _ in range(5000):
        text = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 8)))
        line = kv(key=text)
        assert line.startswith("key="), f"seed {seed}"
        raw = line[len("key="):]
        back = json.loads(raw) if raw.startswith('"') else raw
        assert back == text, f"seed {seed}: {text!r} -> {line!r}"
        if not raw.startswith('"'):
            assert " " not in raw and "=" not in raw and raw.isascii() and raw.isprintable(), f"seed {seed}"
