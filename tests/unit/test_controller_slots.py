"""A finished job hands its slot to the next queued one at once, before the watch reports the job's final phase."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from datamover.api import Phase
from datamover.controller import handlers
from datamover.controller.decisions import Decision
from datamover.controller.handlers import Children, Controller, Key


def job(name: str, version: int, created: str, phase: str, reason: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(version),
                         "creationTimestamp": created},
            "spec": {}, "status": {"phase": phase, "reason": reason}}


def test_the_final_write_frees_the_slot_before_the_index_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    running = job("a", 10, "2026-12-04T10:00:00Z", "running", "Migrating")
    queued = job("b", 11, "2026-12-04T10:00:01Z", "pending", "Queued")
    finished = {**running, "metadata": {**running["metadata"], "resourceVersion": "12"},
                "status": {"phase": "succeeded", "reason": "Succeeded"}}

    def reconcile(body: Mapping[str, Any], children: Children, *_: Any,
                  **__: Any) -> tuple[Decision, Mapping[str, Any]]:
        assert body["metadata"]["name"] == "a" and children.job_complete
        return Decision(Phase.SUCCEEDED, "Succeeded", "all objects migrated and verified"), finished

    monkeypatch.setattr(handlers, "reconcile", reconcile)

    async def scenario() -> list[Key]:
        controller = Controller(max_concurrent_jobs=1)
        # The indices as kopf holds them: the watch has not yet brought a's final phase, and a's Job still exists.
        controller.bind({("ns", "a"): [running], ("ns", "b"): [queued]},
                        {("ns", "a"): [{"suspended": False, "complete": True, "failed": None}]}, {})
        assert not controller.places()[("ns", "b")].admitted
        await controller._step(asyncio.get_running_loop(), ("ns", "a"))
        woken = []
        while len(controller.queue):
            woken.append(await controller.queue.get())
        controller.pool.shutdown()
        return woken

    assert ("ns", "b") in asyncio.run(scenario())


def test_the_remembered_write_is_dropped_once_the_watch_catches_up() -> None:
    controller = Controller()
    older = job("a", 10, "2026-12-04T10:00:00Z", "running", "Migrating")
    newer = job("a", 12, "2026-12-04T10:00:00Z", "succeeded", "Succeeded")
    index: dict[Key, list[dict[str, Any]]] = {("ns", "a"): [older]}
    controller.bind(index, {}, {})
    controller.last_written[("ns", "a")] = newer
    assert controller.current(("ns", "a")) is newer
    index[("ns", "a")] = [newer]
    assert controller.current(("ns", "a")) is newer
    assert ("ns", "a") not in controller.last_written
    controller.pool.shutdown()
