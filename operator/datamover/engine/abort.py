"""Where a migration may stop: the named checkpoints and the thread-safe abort signal the engine reads at each.

The worker turns spec.abort, deletion and SIGTERM into `AbortSignal.request()`; tests fire an abort (or a crash) at a
checkpoint by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# Places where the engine asks "was abort requested?". Tests inject an abort at each by name.
CHECKPOINTS: tuple[str, ...] = (
    "before_list_page",  # before requesting the next page of the source listing
    "before_object",  # before starting work on one object
    "after_create_multipart",  # right after CreateMultipartUpload returned, before its ID is announced to the sink
    "between_parts",  # before starting the next part of a multipart copy
    "between_chunks",  # before reading the next chunk of a download, so abort never waits for a whole object
    # before deleting a verified source object (remain_source=False). Abort is NOT honoured here: a move is one unit
    # per object, so the delete (one request) is finished; the hook still runs, so tests can crash the worker here.
    "before_delete_source",
)
CheckpointHook = Callable[[str, "str | None"], None]


class AbortSignal:
    """A thread-safe "please stop" flag, set once from any thread (watch thread, SIGTERM handler, test hook).

    `on_checkpoint(name, key)` is called every time the engine passes a checkpoint, before the flag is read; a test
    can call `request()` from it to stop exactly there.
    """

    def __init__(self, on_checkpoint: CheckpointHook | None = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._on_checkpoint = on_checkpoint

    def request(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        return self._reason

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on abort; returns whether abort was requested."""
        return self._event.wait(timeout)

    def checkpoint(self, name: str, key: str | None = None) -> bool:
        """Called by the engine at a named checkpoint; returns True if work should stop here."""
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}")
        if self._on_checkpoint is not None:
            self._on_checkpoint(name, key)
        return self.requested

    @classmethod
    def at_checkpoint(cls, name: str, after: int = 0,
                      counts: Callable[[str | None], bool] = lambda key: True) -> AbortSignal:
        """A signal that requests abort the (after+1)-th time the engine reaches checkpoint `name` (for tests);
        `counts(key)` narrows which hits count (e.g. only large objects)."""
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}")
        hits = 0
        lock = threading.Lock()

        def hook(checkpoint: str, key: str | None) -> None:
            nonlocal hits
            if checkpoint != name or not counts(key):
                return
            with lock:
                hits += 1
                fire = hits == after + 1
            if fire:
                signal.request(f"test: abort at {name} #{after + 1} (key={key!r})")

        signal = cls(on_checkpoint=hook)
        return signal
