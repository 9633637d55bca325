"""The operator's one work queue: MigrationJob keys waiting to be reconciled, each at most once, never two at a time.

kopf runs handlers per object, but what wakes a MigrationJob is often another object's event (its Job, its pods) or
the passing of time (an abort grace period), and kopf has no queue that several resources feed. This is the small
deduplicating queue that controller-runtime's workqueue is, in asyncio: a key added while it waits is not added
twice; a key added while it is being reconciled is reconciled once more afterwards; a delayed add keeps only the
earliest wake-up; an urgent key (a job nobody has answered yet) goes before the others. It is used from the event
loop only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class WorkQueue(Generic[Key]):
    """A FIFO of distinct keys with 'again after processing' and 'not before t' semantics."""

    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[tuple[int, int, Key]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._waiting: set[Key] = set()
        self._active: set[Key] = set()
        self._again: dict[Key, bool] = {}  # keys added while active, and whether urgently
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._since: dict[Key, tuple[float, bool]] = {}  # loop time each waiting key was added, and if urgently

    def add(self, key: Key, *, urgent: bool = False) -> None:
        if key in self._active:
            self._again[key] = self._again.get(key, False) or urgent
        elif key not in self._waiting:
            self._waiting.add(key)
            self._since[key] = (asyncio.get_running_loop().time(), urgent)
            self._queue.put_nowait((0 if urgent else 1, next(self._order), key))
        elif urgent and not self._since[key][1]:
            # Already waiting behind the others, now urgent (a freed slot admits it): a second, urgent entry moves it
            # to the front; whichever entry comes out second finds the key no longer waiting and is skipped.
            self._since[key] = (self._since[key][0], True)
            self._queue.put_nowait((0, next(self._order), key))

    def add_after(self, key: Key, delay: float) -> None:
        """Add `key` after `delay` seconds, unless an earlier delayed add of it is already pending."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        """Drop a pending delayed add (the object is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def get(self) -> Key:
        key, _, _ = await self.get_waited()
        return key

    async def get_waited(self) -> tuple[Key, float, bool]:
        """The next key, how long it waited in the queue (seconds) and whether it was added urgently."""
        _, _, key = await self._queue.get()
        while key not in self._waiting:  # the other entry of a key made urgent while it waited
            _, _, key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        added, urgent = self._since.pop(key, (asyncio.get_running_loop().time(), False))
        return key, asyncio.get_running_loop().time() - added, urgent

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._again:
            self.add(key, urgent=self._again.pop(key))

    def __len__(self) -> int:
        return len(self._waiting)
