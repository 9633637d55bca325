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


def test_a_waiting_key_made_urgent_moves_to_the_front_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "c"):
            queue.add(key)
        queue.add("c", urgent=True)  # a freed slot admits c, which was waiting behind a and b
        assert len(queue) == 3
        served = [await queue.get() for _ in range(3)]
        assert served == ["c", "a", "b"]
        assert len(queue) == 0
        for key in served:
            queue.done(key)
        queue.add("c")
        assert await queue.get() == "c"  # c's stale entry was skipped, not served twice

    run(scenario())


def test_an_urgent_add_while_active_keeps_its_urgency() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add("b")
        assert await queue.get() == "a"
        queue.add("a", urgent=True)
        queue.done("a")
        key, waited, urgent = await queue.get_waited()
        assert (key, urgent) == ("a", True)
        assert waited >= 0

    run(scenario())
