"""A cap on the bytes one worker holds in object and part buffers at once, so its memory does not grow with concurrency.

Objects up to the multipart threshold are read whole and parts are read whole before they are written (the PUT needs
their MD5 first). Without a cap, memory would be `concurrency x threshold + partConcurrency x partSize`, so a fast
setting for small objects (many in flight) would be a dangerous one for 16 MiB objects. With it, many small objects
run at once while large buffers wait for room: the bound is the budget, whatever the settings.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator

# How often a buffer waiting for room looks at the abort signal.
WAIT_SECONDS = 0.1


class BufferBudget:
    """Counts bytes held by buffers in flight; `hold` waits, first come first served, until there is room.

    A buffer larger than the whole budget is allowed alone (it waits until nothing else is held), so no object or
    part is refused: the budget is then exceeded by that one buffer, which is what the part size asked for. Waiters
    are served in order, so a large buffer is not starved by a stream of small ones.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a buffer budget must be at least one byte")
        self.capacity = capacity
        self._held = 0
        self._peak = 0
        self._queue: collections.deque[object] = collections.deque()
        # A plain lock under the condition (not the default RLock): every small object takes and gives it once.
        self._room = threading.Condition(threading.Lock())

    @property
    def held(self) -> int:
        return self._held

    @property
    def peak(self) -> int:
        """The most bytes held at once so far (what the bench and the tests compare with the capacity)."""
        return self._peak

    @contextlib.contextmanager
    def hold(self, size: int, checkpoint: Callable[[], None]) -> Iterator[None]:
        """Hold `size` bytes for the block; `checkpoint` is called while waiting and may raise (abort)."""
        size = max(0, size)
        self._acquire(size, checkpoint)
        try:
            yield
        finally:
            with self._room:
                self._held -= size
                if self._queue:
                    self._room.notify_all()

    def _acquire(self, size: int, checkpoint: Callable[[], None]) -> None:
        turn = object()
        with self._room:
            if not self._queue and (not self._held or self._held + size <= self.capacity):
                self._take(size)  # the usual case: nobody waiting and room enough
                return
            self._queue.append(turn)
        try:
            while True:
                with self._room:
                    if self._queue[0] is turn and (not self._held or self._held + size <= self.capacity):
                        self._queue.popleft()
                        self._take(size)
                        self._room.notify_all()  # the next in line may fit too
                        return
                    self._room.wait(WAIT_SECONDS)
                checkpoint()  # outside the lock: a test's checkpoint hook may take its time
        except BaseException:
            with self._room:
                if turn in self._queue:
                    self._queue.remove(turn)
                self._room.notify_all()
            raise

    def _take(self, size: int) -> None:
        self._held += size
        self._peak = max(self._peak, self._held)
