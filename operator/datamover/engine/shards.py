"""How the workers of one job share one listing of the source: each page is listed once, by whichever worker claims it.

Shards are key ranges formed as the listing goes: a worker that needs work takes the listing lock in a small shared
document (the ledger), lists one page starting after the ledger's cursor, then in one compare-and-swap moves the cursor
to the page's last key, records the page's range as open under its own index, and lets the lock go. Ranges therefore
partition the key space (each starts where the previous one ended), every page is listed once, and a faster worker
simply claims more pages. A range stays open in the ledger until all of its objects ended migrated, skipped or
excluded, so a restarted worker re-lists exactly its open ranges (nothing skipped, nothing of another worker's taken).

The engine sees only `LedgerStore` (load, compare-and-swap); the worker keeps the document in the MigrationJob's
status, tests and scripts keep it in memory (`MemoryLedgerStore`). The document changes only through the pure
functions below, which the unit tests check directly. docs/engine.md ("One listing per job") says why this design.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from datamover.backends.base import ListPage, ObjectStore, ObjectSummary
from datamover.engine.abort import AbortSignal
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")

# How often a worker waiting for the listing lock looks again (and at the abort flag).
WAIT_SECONDS = 0.2

Ledger = dict[str, Any]


@dataclass(frozen=True)
class KeyRange:
    """The source keys k with `after` < k <= `through`, in key order; `through` None means to the end of the listing.

    `after` is "" for the first range (every key sorts after the empty string)."""

    after: str
    through: str | None

    def holds(self, key: str) -> bool:
        return key > self.after and (self.through is None or key <= self.through)

    def to_ledger(self) -> list[str | None]:
        return [self.after, self.through]

    @classmethod
    def from_ledger(cls, raw: Any) -> KeyRange:
        return cls(after=str(raw[0]), through=None if raw[1] is None else str(raw[1]))


class LedgerStore(Protocol):
    """A small shared document with compare-and-swap: all that the workers of one job share about the listing.

    Implementations must be safe to call from several threads and processes; `version` is opaque to the engine."""

    def load(self) -> tuple[Ledger | None, str | None]:
        """The document and its version, or (None, None) if nobody has written one yet."""

    def swap(self, document: Ledger, version: str | None) -> str | None:
        """Write `document` if the stored version is still `version` (None: only if there is no document yet);
        return the new version, or None if someone else wrote first. Raise if the store cannot be reached."""


class MemoryLedgerStore:
    """A LedgerStore in this process: for a lone worker, tests and scripts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._document: Ledger | None = None
        self._version = 0
        self.swaps = 0  # writes that landed, for tests and bench figures

    def load(self) -> tuple[Ledger | None, str | None]:
        with self._lock:
            if self._document is None:
                return None, None
            return copy.deepcopy(self._document), str(self._version)

    def swap(self, document: Ledger, version: str | None) -> str | None:
        with self._lock:
            current = None if self._document is None else str(self._version)
            if current != version:
                return None
            self._document, self._version = copy.deepcopy(document), self._version + 1
            self.swaps += 1
            return str(self._version)


# The ledger document, changed only by these pure functions. "cursor": the last key listed ("" before the first
# page); "finished": the last page was listed; "lister": who holds the listing lock ({"worker", "attempt"}) or None;
# "open": per worker index (a string, as in status.workers), the ranges it claimed whose objects are not all done.


def initial_ledger() -> Ledger:
    return {"cursor": "", "finished": False, "lister": None, "pages": 0, "open": {}}


def open_ranges(ledger: Ledger, worker: int) -> list[KeyRange]:
    return [KeyRange.from_ledger(raw) for raw in ledger.get("open", {}).get(str(worker), [])]


def with_lock(ledger: Ledger, worker: int, attempt: str) -> Ledger:
    taken = copy.deepcopy(ledger)
    taken["lister"] = {"worker": worker, "attempt": attempt}
    return taken


def with_page(ledger: Ledger, worker: int, claimed: KeyRange, last: bool) -> Ledger:
    """The ledger after `worker` listed the page `claimed` (which starts at the cursor): cursor moved, range open,
    lock free."""
    if claimed.after != ledger["cursor"]:
        raise ValueError(f"a page must start at the cursor {ledger['cursor']!r}, not at {claimed.after!r}")
    if not last and claimed.through is None:
        raise ValueError("only the last page may reach the end of the listing")
    moved = copy.deepcopy(ledger)
    moved["cursor"] = claimed.through if claimed.through is not None else ledger["cursor"]
    moved["finished"] = last
    moved["lister"] = None
    moved["pages"] = int(ledger.get("pages", 0)) + 1
    moved.setdefault("open", {}).setdefault(str(worker), []).append(claimed.to_ledger())
    return moved


def without_ranges(ledger: Ledger, worker: int, done: list[KeyRange]) -> Ledger:
    """The ledger with `done` (ranges of `worker` whose objects all ended well) no longer open."""
    closed = {(r.after, r.through) for r in done}
    kept = [raw for raw in ledger.get("open", {}).get(str(worker), [])
            if (KeyRange.from_ledger(raw).after, KeyRange.from_ledger(raw).through) not in closed]
    changed = copy.deepcopy(ledger)
    if kept:
        changed.setdefault("open", {})[str(worker)] = kept
    else:
        changed.setdefault("open", {}).pop(str(worker), None)
    return changed


def page_range(after: str, page: ListPage) -> KeyRange:
    """The range one listed page covers: from the cursor to its last key, or to the end if it is the last page."""
    if page.next_token is None:
        return KeyRange(after, None)
    return KeyRange(after, page.objects[-1].key)


def list_range(source: ObjectStore, claimed: KeyRange, before_page: Callable[[], bool]) -> Iterator[ObjectSummary]:
    """The source keys in `claimed`, listed again from its start (a restarted worker resuming an open range).

    `before_page` is called before each LIST; True stops the listing (abort)."""
    token: str | None = None
    while True:
        if before_page():
            return
        page = source.list_page(source.prefix, token, start_after=claimed.after or None)
        for summary in page.objects:
            if claimed.through is not None and summary.key > claimed.through:
                return
            if claimed.holds(summary.key):
                yield summary
        if page.next_token is None:
            return
        token = page.next_token


@dataclass(frozen=True)
class Claim:
    """A page this worker listed and recorded as its own: the range it covers and its keys."""

    range: KeyRange
    objects: tuple[ObjectSummary, ...]


class SharedListing:
    """One worker's side of the ledger: resume its open ranges, claim the next page, close ranges that are done.

    A lock holder that shows no change for `stale_after` seconds (a worker that died while listing) is taken over;
    the old holder's commit then fails its compare-and-swap, so its page is never dispatched twice. A restarted
    attempt of the same worker index takes its own lock over at once.
    """

    def __init__(self, store: LedgerStore, worker: int, stale_after: float, shard: str) -> None:
        self._store = store
        self._worker = worker
        self._attempt = uuid.uuid4().hex
        self._stale_after = stale_after
        self._shard = shard
        self._done: list[KeyRange] = []  # closed here, not yet written to the ledger
        self._done_lock = threading.Lock()
        self.lists = 0  # LIST requests this worker sent for new pages (bench and tests)

    def _load(self) -> tuple[Ledger, str]:
        while True:
            ledger, version = self._store.load()
            if ledger is not None and version is not None:
                return ledger, version
            self._store.swap(initial_ledger(), None)  # first worker in: whoever wins, the next load sees it

    def resume(self) -> list[KeyRange]:
        """Ranges an earlier attempt of this worker claimed and did not finish: they are listed again in full."""
        ledger, _ = self._load()
        return open_ranges(ledger, self._worker)

    def close(self, done: KeyRange) -> None:
        """All objects of `done` ended migrated, skipped or excluded: it need not be listed again (written with the
        next claim, or by flush())."""
        with self._done_lock:
            self._done.append(done)

    def _with_closed(self, ledger: Ledger) -> tuple[Ledger, list[KeyRange]]:
        with self._done_lock:
            done = list(self._done)
        return without_ranges(ledger, self._worker, done), done

    def _forget(self, written: list[KeyRange]) -> None:
        with self._done_lock:
            self._done = [r for r in self._done if r not in written]

    def flush(self) -> None:
        """Write the ranges closed since the last claim (at the end of a run)."""
        while True:
            ledger, version = self._load()
            changed, done = self._with_closed(ledger)
            if not done:
                return
            if self._store.swap(changed, version) is not None:
                self._forget(done)
                return

    def claim(self, source: ObjectStore, abort: AbortSignal, stopping: Callable[[], bool]) -> Claim | None:
        """List the next page of the source and record it as this worker's; None once the listing is finished (by
        anyone) or when stopping. Blocks while another worker holds the listing lock."""
        seen: tuple[str, float] | None = None  # the locked version we are waiting on, and since when
        while True:
            if stopping():
                return None
            ledger, version = self._load()
            if ledger["finished"]:
                return None
            lister = ledger.get("lister")
            if lister and lister.get("attempt") != self._attempt and lister.get("worker") != self._worker:
                if seen is None or seen[0] != version:
                    seen = (version, time.monotonic())
                if time.monotonic() - seen[1] < self._stale_after:
                    abort.wait(WAIT_SECONDS)
                    continue
                log.warning(kv(event="listing_lock_taken_over", shard=self._shard, holder=lister.get("worker")))
            locked, done = self._with_closed(with_lock(ledger, self._worker, self._attempt))
            locked_version = self._store.swap(locked, version)
            if locked_version is None:
                continue  # someone else moved first: look again
            self._forget(done)
            if abort.checkpoint("before_list_page", None) or stopping():
                self._release_lock(locked, locked_version)
                return None
            try:
                page = self._list_from(source, locked["cursor"])
            except BaseException:
                self._release_lock(locked, locked_version)  # so the others need not wait to take it over
                raise
            claimed = page_range(locked["cursor"], page)
            committed = with_page(locked, self._worker, claimed, last=page.next_token is None)
            if self._store.swap(committed, locked_version) is None and not self._recorded(claimed):
                # Our lock was taken over (we looked dead): the page belongs to whoever lists it next.
                log.warning(kv(event="listing_claim_lost", shard=self._shard, after=claimed.after))
                continue
            return Claim(claimed, tuple(page.objects))

    def _release_lock(self, locked: Ledger, version: str) -> None:
        try:
            self._store.swap({**locked, "lister": None}, version)
        except Exception as error:  # the others take the lock over after stale_after
            log.warning(kv(event="listing_lock_release_failed", shard=self._shard, error=repr(error)))

    def _recorded(self, claimed: KeyRange) -> bool:
        """Whether the ledger holds `claimed` as ours after all (a write that landed though its answer was lost):
        only this worker index records ranges under its name, and the cursor never comes back to a range."""
        ledger, _ = self._load()
        return claimed in open_ranges(ledger, self._worker) and ledger["cursor"] == (claimed.through or claimed.after)

    def _list_from(self, source: ObjectStore, cursor: str) -> ListPage:
        """One page after `cursor`. A store may answer an empty page that is not the last: follow it to a non-empty
        one (never seen on S3 or MinIO, but the cursor must move)."""
        page = source.list_page(source.prefix, None, start_after=cursor or None)
        self.lists += 1
        while not page.objects and page.next_token is not None:
            page = source.list_page(source.prefix, page.next_token, start_after=cursor or None)
            self.lists += 1
        return page
