"""The buffer budget: a worker's object and part buffers never hold more than it, whatever the concurrency."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from datamover.backends.base import MiB
from datamover.controller import resources
from datamover.engine import MigrationOptions, NullSink, Outcome, migrate
from datamover.engine.abort import AbortSignal
from datamover.engine.budget import BufferBudget
from datamover.worker.main import buffer_budget
from tests.unit import moto_s3, store
from tests.unit.test_resources import OWNER, SPEC


def _never() -> None:
    pass


def test_many_threads_never_hold_more_than_the_budget() -> None:
    budget = BufferBudget(100)
    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    sizes = [chooser.randint(0, 60) for _ in range(400)]
    inside = 0
    worst = 0
    lock = threading.Lock()

    def one(size: int) -> None:
        nonlocal inside, worst
        with budget.hold(size, _never):
            with lock:
                inside += size
                worst = max(worst, inside)
            threading.Event().wait(0.0005)
            with lock:
                inside -= size

    threads = [threading.Thread(target=one, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert worst <= 100, f"seed {seed}"
    assert budget.peak <= 100 and budget.held == 0, f"seed {seed}"


def test_a_buffer_larger_than_the_budget_runs_alone() -> None:
    budget = BufferBudget(10)
    small_in = threading.Event()
    release_small = threading.Event()
    seen_with_large: list[int] = []

    def small() -> None:
        with budget.hold(4, _never):
            small_in.set()
            release_small.wait(10)

    holder = threading.Thread(target=small)
    holder.start()
    assert small_in.wait(10)
    large = threading.Thread(target=lambda: _hold_and_record(budget, 25, seen_with_large))
    large.start()
    # The large one waits for the small one, then runs with nothing else held.
    assert not _joined(large, 0.3)
    release_small.set()
    holder.join(10)
    assert _joined(large, 10)
    assert seen_with_large == [25]


def _hold_and_record(budget: BufferBudget, size: int, seen: list[int]) -> None:
    with budget.hold(size, _never):
        seen.append(budget.held)


def _joined(thread: threading.Thread, seconds: float) -> bool:
    thread.join(seconds)
    return not thread.is_alive()


def test_waiters_are_served_in_order_so_a_large_buffer_is_not_starved() -> None:
    budget = BufferBudget(10)
    order: list[str] = []
    first_in, let_go = threading.Event(), threading.Event()

    def first() -> None:
        with budget.hold(6, _never):
            first_in.set()
            let_go.wait(10)

    def later(name: str, size: int) -> None:
        with budget.hold(size, _never):
            order.append(name)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_in.wait(10)
    large = threading.Thread(target=later, args=("large", 8))
    large.start()
    _wait_for(lambda: len(budget._queue) == 1)
    # 2 bytes would fit beside the first holder now, but the large buffer asked first.
    small = threading.Thread(target=later, args=("small", 2))
    small.start()
    _wait_for(lambda: len(budget._queue) == 2)
    let_go.set()
    for thread in (threads[0], large, small):
        thread.join(10)
    assert order == ["large", "small"]


def _wait_for(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached")


def test_an_abort_while_waiting_gives_up_the_turn() -> None:
    budget = BufferBudget(10)
    stop = threading.Event()

    class Stop(Exception):
        pass

    def checkpoint() -> None:
        if stop.is_set():
            raise Stop

    outcome: list[str] = []

    def waiter() -> None:
        try:
            with budget.hold(8, checkpoint):
                outcome.append("held")
        except Stop:
            outcome.append("stopped")

    with budget.hold(5, _never):
        thread = threading.Thread(target=waiter)
        thread.start()
        _wait_for(lambda: len(budget._queue) == 1)
        stop.set()
        thread.join(10)
    assert outcome == ["stopped"]
    assert budget.held == 0 and not budget._queue
    with budget.hold(10, _never):  # the turn was given up: the next comer is not stuck behind it
        assert budget.held == 10


class _RecordingBudget(BufferBudget):
    made: ClassVar[list[BufferBudget]] = []

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        _RecordingBudget.made.append(self)


@pytest.fixture
def recorded_budgets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BufferBudget]]:
    _RecordingBudget.made = []
    monkeypatch.setattr(sys.modules["datamover.engine.migrate"], "BufferBudget", _RecordingBudget)
    yield _RecordingBudget.made


def test_a_migration_with_many_objects_in_flight_stays_within_its_budget(
    recorded_budgets: list[BufferBudget],
) -> None:
    with moto_s3():
        source, destination = store("src"), store("dst", account="b")
        for index in range(24):
            source.client.put_object(Bucket="src", Key=f"k{index:02d}", Body=bytes([index]) * MiB)
        for index in range(2):  # in parts: 5 MiB parts, each held whole
            source.client.put_object(Bucket="src", Key=f"large{index}", Body=bytes([index]) * (12 * MiB))
        options = MigrationOptions(concurrency=32, part_concurrency=8, part_size=5 * MiB,
                                   multipart_threshold=8 * MiB, buffer_budget=6 * MiB)
        result = migrate(source, destination, options, AbortSignal(), NullSink())
        assert result.outcome is Outcome.SUCCEEDED and result.progress.objects_migrated == 26
        for index in range(24):
            body = destination.client.get_object(Bucket="dst", Key=f"k{index:02d}")["Body"].read()
            assert body == bytes([index]) * MiB
    (budget,) = recorded_budgets
    assert 5 * MiB <= budget.peak <= 6 * MiB and budget.held == 0


@pytest.mark.parametrize(("limit", "expected"), [
    ("1073741824", 448 * MiB),  # the chart's 1Gi: half of what the 128 MiB baseline leaves
    (str(24 * 1024 * MiB), 1024 * MiB),  # no limit set: the node's memory, capped
    (str(100 * MiB), 5 * MiB),  # a tiny limit: still one smallest part
    ("", MigrationOptions.buffer_budget),  # not in a pod
])
def test_the_worker_sizes_its_budget_from_its_memory_limit(limit: str, expected: int) -> None:
    env = {"DATAMOVER_MEMORY_LIMIT": limit} if limit else {}
    assert buffer_budget(env) == expected


def test_the_worker_is_told_its_memory_limit_by_the_downward_api() -> None:
    job = resources.job(OWNER, SPEC, resources.WorkerSettings())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (variable,) = (e for e in container["env"] if e["name"] == "DATAMOVER_MEMORY_LIMIT")
    assert variable["valueFrom"] == {"resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}}
