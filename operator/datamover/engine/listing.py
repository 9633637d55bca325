"""Walking the destination listing in step with the source's, so checking whether an object is there costs nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datamover.backends.base import ErrorKind, ObjectStore, ObjectSummary, StoreError
from datamover.engine.abort import AbortSignal
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")


@dataclass(frozen=True)
class DestinationHint:
    """What the destination listing said about this object's key; `known=False` means "ask with HEAD"."""

    known: bool
    existing: ObjectSummary | None = None


UNKNOWN = DestinationHint(known=False)


class DestinationIndex:
    """Walks the destination listing in step with the source listing, so checking an object costs no request.

    Both listings come back in key order (UTF-8 byte order, which is also Python's str order), and re-rooting keys
    from one prefix to the other keeps that order, so a merge walk finds each destination key with one page of memory.
    If the order ever looks wrong, or the destination may not be listed, it answers UNKNOWN and objects are checked
    with HEAD instead: slower, never wrong. A worker walks one index per run of contiguous source ranges, starting
    after the range's first key re-rooted to the destination, so it lists only the destination keys of its ranges.
    """

    def __init__(self, destination: ObjectStore, abort: AbortSignal, shard: str, start_after: str = "") -> None:
        self._destination = destination
        self._start_after = start_after  # the walk starts after this destination key (a shard's range starts there)
        self._abort = abort
        self._shard = shard
        self._page: list[ObjectSummary] = []
        self._position = 0
        self._token: str | None = None
        self._exhausted = False
        self._disabled = False
        self._last_key: str | None = None

    def _disable(self, why: str) -> None:
        self._disabled = True
        log.warning(kv(event="destination_index_disabled", shard=self._shard, reason=why))

    def lookup(self, key: str) -> DestinationHint:
        if self._disabled:
            return UNKNOWN
        if self._last_key is not None and key <= self._last_key:
            self._disable(f"source listing out of order at {key!r}")
            return UNKNOWN
        self._last_key = key
        while True:
            while self._position < len(self._page):
                item = self._page[self._position]
                if item.key < key:
                    self._position += 1
                elif item.key == key:
                    return DestinationHint(known=True, existing=item)
                else:
                    return DestinationHint(known=True, existing=None)
            if self._exhausted:
                return DestinationHint(known=True, existing=None)
            if not self._next_page():
                return UNKNOWN

    def _next_page(self) -> bool:
        if self._abort.checkpoint("before_list_page", None):
            return False  # the dispatcher sees the abort right after this lookup
        try:
            page = self._destination.list_page(self._destination.prefix, self._token,
                                               start_after=self._start_after or None)
        except StoreError as error:
            if error.kind is not ErrorKind.PERMANENT:
                raise
            self._disable(error.message)  # e.g. write-only credentials: fall back to HEAD per object
            return False
        previous = self._page[-1].key if self._page else None
        self._page, self._position = list(page.objects), 0
        if previous is not None and self._page and self._page[0].key <= previous:
            self._disable("destination listing out of order")
            return False
        self._token = page.next_token
        self._exhausted = page.next_token is None
        return True
