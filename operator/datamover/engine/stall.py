"""The stall detector: an endpoint that accepts connections but stops answering fails the worker within a bound."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from datamover.backends.base import ErrorKind, ObjectStore, StoreError
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")


class StallWatch:
    """The stall detector: a store whose requests have waited 3/4 of stall_timeout with no answer (no response,
    no body bytes) stops the worker with a permanent-looking error naming the endpoint.

    The store is interrupted too, so botocore's remaining retries fail at once; the attempts on the wire end within
    the request timeout the backend derived from the same setting (a quarter of it): the worker fails within
    stall_timeout of the endpoint's last answer, not after every retry has timed out.
    """

    def __init__(self, stores: tuple[ObjectStore, ...], stall_timeout: float, shard: str) -> None:
        self._stores = stores
        self._limit = stall_timeout * 3 / 4
        self._stall_timeout = stall_timeout
        self._shard = shard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="datamover-stall-watch", daemon=True)
        self.error: StoreError | None = None
        self.on_stall: Callable[[StoreError], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self._limit / 4)):
            for store in self._stores:
                waited = store.stalled_for()
                if waited < self._limit:
                    continue
                message = (f"no answer from {store.describe()} for {waited:.0f} s (stallTimeoutSeconds="
                           f"{self._stall_timeout:g}): the endpoint accepts connections but does not respond")
                self.error = StoreError(ErrorKind.PERMANENT, message, "Stalled")
                log.warning(kv(event="stalled", shard=self._shard, store=store.describe(), waited=f"{waited:.1f}"))
                for each in self._stores:
                    each.interrupt(message)
                if self.on_stall is not None:
                    self.on_stall(self.error)
                return
