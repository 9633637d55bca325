"""The operator's work queue: each key once, never twice at a time, urgent keys first, delayed adds coalesced."""

from __future__ import annotations

import asyncio

from datamover.controller.workqueue import WorkQueue


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_key_waits_once_and_urgent_keys_go_first() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "b"):
            queue.add(key)
        queue.add("new", urgent=True)
        assert len(queue) == 3
        assert [await queue.get() for _ in range(3)] == ["new", "a", "b"]

    run(scenario())


def test_a_key_added_while_active_is_processed_again_afterwards() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        key = await queue.get()
        queue.add("a")  # an event arrived while "a" was being reconciled
        assert len(queue) == 0  # not handed to a second reconciler at the same time
        queue.done(key)
        assert len(queue) == 1 and await queue.get() == "a"

    run(scenario())


def test_delayed_adds_keep_the_earliest_and_can_be_forgotten() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 60)
        queue.add_after("a", 0.01)  # earlier: replaces the 60 s one
        queue.add_after("a", 30)  # later: ignored
        assert await asyncio.wait_for(queue.get(), timeout=10) == "a"
        queue.done("a")
        queue.add_after("b", 0.01)
        queue.forget("b")
        await asyncio.sleep(0.05)
        assert len(queue) == 0

    run(scenario())
