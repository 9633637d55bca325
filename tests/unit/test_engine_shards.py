"""Shard formation (engine.shards): the ledger's pure functions, and workers claiming pages of one listing."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from datamover.backends.base import ListPage, ObjectSummary
from datamover.engine import AbortSignal, MemoryLedgerStore, MigrationOptions, ObjectFilter, Outcome, migrate
from datamover.engine.shards import (
    KeyRange,
    SharedListing,
    initial_ledger,
    list_range,
    open_ranges,
    page_range,
    with_lock,
    with_page,
    without_ranges,
)
from tests.synthetic import SyntheticStore
from tests.unit import RecordingSink


def never() -> bool:
    return False


def summaries(*keys: str) -> list[ObjectSummary]:
    return [ObjectSummary(key, 1, "e") for key in keys]


def test_a_page_covers_from_the_cursor_to_its_last_key_and_the_last_page_to_the_end() -> None:
    assert page_range("", ListPage(summaries("a", "b"), next_token="t")) == KeyRange("", "b")
    assert page_range("b", ListPage(summaries("c"), next_token=None)) == KeyRange("b", None)
    assert KeyRange("b", "d").holds("c") and KeyRange("b", "d").holds("d")
    assert not KeyRange("b", "d").holds("b") and not KeyRange("b", "d").holds("d0")
    assert KeyRange("", None).holds("") is False and KeyRange("", None).holds("\x00")


def test_claiming_moves_the_cursor_records_the_range_and_frees_the_lock() -> None:
    ledger = with_lock(initial_ledger(), 2, "attempt-1")
    assert ledger["lister"] == {"worker": 2, "attempt": "attempt-1"}
    ledger = with_page(ledger, 2, KeyRange("", "k9"), last=False)
    assert ledger["cursor"] == "k9" and ledger["lister"] is None and not ledger["finished"]
    ledger = with_page(ledger, 0, KeyRange("k9", None), last=True)
    assert ledger["finished"] and ledger["cursor"] == "k9" and ledger["pages"] == 2
    assert open_ranges(ledger, 2) == [KeyRange("", "k9")] and open_ranges(ledger, 0) == [KeyRange("k9", None)]
    ledger = without_ranges(ledger, 2, [KeyRange("", "k9")])
    assert open_ranges(ledger, 2) == [] and "2" not in ledger["open"]


def test_a_page_that_does_not_start_at_the_cursor_is_refused() -> None:
    with pytest.raises(ValueError, match="cursor"):
        with_page(initial_ledger(), 0, KeyRange("k1", "k2"), last=False)
    with pytest.raises(ValueError, match="last page"):
        with_page(initial_ledger(), 0, KeyRange("", None), last=False)


@pytest.mark.parametrize("seed", range(8))
def test_ranges_claimed_in_any_order_partition_the_keys_and_list_each_page_once(seed: int) -> None:
    rng = random.Random(seed)
    count, page_size, workers = rng.randrange(0, 400), rng.randrange(1, 60), rng.randrange(1, 9)
    source = SyntheticStore("src", "p/", count, page_size=page_size)
    store = MemoryLedgerStore()
    listings = [SharedListing(store, index, 60.0, f"{index}/{workers}") for index in range(workers)]
    claimed: dict[int, list[KeyRange]] = {index: [] for index in range(workers)}
    keys: list[str] = []
    live = list(range(workers))
    while live:
        index = rng.choice(live)
        claim = listings[index].claim(source, AbortSignal(), never)
        if claim is None:
            live.remove(index)
            continue
        claimed[index].append(claim.range)
        keys.extend(summary.key for summary in claim.objects)
        assert all(claim.range.holds(summary.key) for summary in claim.objects)
    expected = [f"p/k{i:08d}" for i in range(count)]
    assert keys == expected  # every key once, in order: the ranges partition the listing
    assert source.requests["ListObjectsV2"] == max(1, -(-count // page_size))
    ledger, _ = store.load()
    assert ledger is not None and ledger["finished"]
    assert {index: open_ranges(ledger, index) for index in range(workers)} == {
        index: ranges for index, ranges in claimed.items() if ranges} | {
        index: [] for index, ranges in claimed.items() if not ranges}


def test_a_restarted_worker_resumes_exactly_its_open_ranges() -> None:
    source = SyntheticStore("src", "", 30, page_size=10)
    store = MemoryLedgerStore()
    first, other = SharedListing(store, 0, 60.0, "0/2"), SharedListing(store, 1, 60.0, "1/2")
    mine = first.claim(source, AbortSignal(), never)
    theirs = other.claim(source, AbortSignal(), never)
    done = first.claim(source, AbortSignal(), never)
    assert mine and theirs and done
    first.close(done.range)
    first.flush()
    restarted = SharedListing(store, 0, 60.0, "0/2")  # a new pod of index 0
    assert restarted.resume() == [mine.range]
    relisted = [summary.key for summary in list_range(source, mine.range, never)]
    assert relisted == [summary.key for summary in mine.objects] == [f"k{i:08d}" for i in range(10)]


def test_a_restarted_worker_takes_its_own_lock_over_at_once_and_the_dead_holders_commit_fails() -> None:
    source = SyntheticStore("src", "", 25, page_size=10)
    store = MemoryLedgerStore()
    SharedListing(store, 0, 60.0, "0/1").resume()  # writes the first ledger
    ledger_doc, version = store.load()
    assert ledger_doc is not None and version is not None
    # The first pod of index 0 took the lock and died before listing.
    store.swap(with_lock(ledger_doc, 0, "dead-attempt"), version)
    claim = SharedListing(store, 0, 3600.0, "0/1").claim(source, AbortSignal(), never)
    assert claim is not None and claim.range == KeyRange("", "k00000009")


def test_another_worker_takes_a_silent_lock_over_after_stale_after() -> None:
    source = SyntheticStore("src", "", 25, page_size=10)
    store = MemoryLedgerStore()
    SharedListing(store, 0, 60.0, "0/2").resume()
    ledger_doc, version = store.load()
    assert ledger_doc is not None and version is not None
    locked_version = store.swap(with_lock(ledger_doc, 0, "silent"), version)
    claim = SharedListing(store, 1, 0.5, "1/2").claim(source, AbortSignal(), never)
    assert claim is not None and claim.range == KeyRange("", "k00000009")
    # The silent holder wakes up and commits what it listed: refused, so the page is not claimed twice.
    locked = with_lock(ledger_doc, 0, "silent")
    assert store.swap(with_page(locked, 0, KeyRange("", "k00000009"), last=False), locked_version) is None


def test_a_commit_whose_answer_was_lost_still_counts_as_claimed() -> None:
    source = SyntheticStore("src", "", 25, page_size=10)

    class LosesAnswers(MemoryLedgerStore):
        lose_next_commit = True

        def swap(self, document: Any, version: str | None) -> str | None:
            written = super().swap(document, version)
            if written and document.get("pages") and self.lose_next_commit:
                self.lose_next_commit = False
                return None  # it landed; the answer did not
            return written

    store = LosesAnswers()
    listing = SharedListing(store, 0, 60.0, "0/1")
    first = listing.claim(source, AbortSignal(), never)
    second = listing.claim(source, AbortSignal(), never)
    assert first and second and first.range == KeyRange("", "k00000009") and second.range.after == "k00000009"
    assert source.requests["ListObjectsV2"] == 2


def test_abort_while_waiting_for_the_lock_returns_without_listing() -> None:
    source = SyntheticStore("src", "", 25, page_size=10)
    store = MemoryLedgerStore()
    SharedListing(store, 0, 60.0, "0/2").resume()
    ledger_doc, version = store.load()
    assert ledger_doc is not None and version is not None
    store.swap(with_lock(ledger_doc, 0, "busy"), version)
    abort = AbortSignal()
    threading.Timer(0.3, abort.request, args=("test",)).start()
    assert SharedListing(store, 1, 3600.0, "1/2").claim(source, abort, lambda: abort.requested) is None
    assert source.requests["ListObjectsV2"] == 0


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_concurrent_workers_migrate_every_key_once_with_one_listing(workers: int) -> None:
    count, page = 3000, 100
    source, destination = SyntheticStore("src", "", count, page_size=page), SyntheticStore("dst", "", 0)
    destination.keep_written = True
    store = MemoryLedgerStore()
    results: list[Any] = [None] * workers

    def run(index: int) -> None:
        options = MigrationOptions(shard_index=index, shard_count=workers, concurrency=4, progress_interval=60)
        results[index] = migrate(source, destination, options, AbortSignal(), RecordingSink(), store)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.outcome is Outcome.SUCCEEDED for result in results)
    assert sum(result.progress.objects_migrated for result in results) == count
    assert destination.requests["PutObject"] == count and len(destination.written) == count
    assert source.requests["ListObjectsV2"] == count // page  # one listing per job, whatever the parallelism
    assert destination.requests["ListObjectsV2"] <= 1.1 * count / page
    ledger, _ = store.load()
    assert ledger is not None and ledger["finished"] and not ledger["open"]  # every range closed


def test_a_move_with_a_filter_split_across_workers_moves_exactly_the_selected_keys() -> None:
    count, page, workers = 600, 50, 4
    source, destination = SyntheticStore("src", "", count, page_size=page), SyntheticStore("dst", "", 0)
    destination.keep_written = True
    store = MemoryLedgerStore()
    selected = {f"k{i:08d}" for i in range(count) if i % 10 == 3}
    results: list[Any] = [None] * workers

    def run(index: int) -> None:
        options = MigrationOptions(shard_index=index, shard_count=workers, remain_source=False, progress_interval=60,
                                   filter=ObjectFilter(include=("*3",)))
        results[index] = migrate(source, destination, options, AbortSignal(), RecordingSink(), store)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.outcome is Outcome.SUCCEEDED for result in results)
    assert destination.written == selected and source.deleted == selected
    assert sum(result.progress.objects_excluded for result in results) == count - len(selected)
    assert source.requests["ListObjectsV2"] == count // page
