"""spec.throttle in the engine: the long-run rate is the limit, a change applies to waits in progress, abort wakes."""

from __future__ import annotations

import threading

import pytest

from datamover.api import MigrationSpec, SpecError, ThrottleSpec
from datamover.engine import AbortSignal, Throttle
from datamover.worker.main import _follow_throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SteppedThrottle(Throttle):
    """A throttle whose waits pass on a fake clock instead of real time."""

    def __init__(self, clock: FakeClock, *limits: float | None) -> None:
        super().__init__(*limits, clock=clock)
        self.fake = clock
        self.on_pause: list[float] = []

    def _pause(self, seconds: float) -> None:
        self.on_pause.append(seconds)
        self.fake.now += seconds


def test_bytes_flow_at_the_limit_in_the_long_run_however_large_each_read() -> None:
    clock = FakeClock()
    throttle = SteppedThrottle(clock, 1024 * 1024, None)
    for _ in range(10):
        throttle.take_bytes(4 * 1024 * 1024, AbortSignal())  # each read is four seconds' budget
    # 40 MiB at 1 MiB/s: the first read goes at once, every later one waits for the debt before it.
    assert clock.now - 1000.0 == pytest.approx(36.0, abs=0.01)
    assert throttle.waited == pytest.approx(36.0, abs=0.01)
    assert max(throttle.on_pause) <= 0.25  # waits are sliced, so a change or an abort is seen quickly


def test_requests_are_spaced_and_an_idle_worker_saves_up_one_second_only() -> None:
    clock = FakeClock()
    throttle = SteppedThrottle(clock, None, 10)
    for _ in range(21):
        throttle.take_request(AbortSignal())
    assert clock.now - 1000.0 == pytest.approx(2.0, abs=0.01)
    clock.now += 3600  # an hour idle
    before = clock.now
    for _ in range(21):
        throttle.take_request(AbortSignal())
    assert clock.now - before == pytest.approx(1.0, abs=0.01)  # 10 saved, not 36,000


def test_lifting_a_limit_releases_a_waiting_reader_and_abort_does_too() -> None:
    throttle = Throttle(1024, None)  # real time: a 1 GiB debt would take twelve days to pay
    throttle.take_bytes(2**30, AbortSignal())
    released = threading.Event()

    def reader(abort: AbortSignal) -> None:
        throttle.take_bytes(1, abort)
        released.set()

    waiting = threading.Thread(target=reader, args=(AbortSignal(),))
    waiting.start()
    assert not released.wait(0.5)
    throttle.set(None, None)
    waiting.join(timeout=30)
    assert released.is_set() and throttle.limits == (None, None)

    throttle.set(1024, None)
    throttle.take_bytes(2**30, AbortSignal())
    released.clear()
    abort = AbortSignal()
    stopped = threading.Thread(target=reader, args=(abort,))
    stopped.start()
    assert not released.wait(0.5)
    abort.request("test")
    stopped.join(timeout=30)
    assert released.is_set()


def test_the_spec_splits_the_limits_across_workers_and_refuses_nonsense() -> None:
    spec = MigrationSpec.from_spec({"source": {"bucket": "a"}, "destination": {"bucket": "b"}, "parallelism": 4,
                                    "throttle": {"bytesPerSecond": "40Mi", "requestsPerSecond": 100}})
    assert spec.throttle == ThrottleSpec(40 * 2**20, 100)
    assert spec.throttle.per_worker(4) == (10 * 2**20, 25.0)
    assert ThrottleSpec().per_worker(4) == (None, None)
    with pytest.raises(SpecError, match=r"spec\.throttle\.bytesPerSecond"):
        ThrottleSpec.from_spec({"bytesPerSecond": 100})
    with pytest.raises(SpecError, match=r"spec\.throttle\.requestsPerSecond"):
        ThrottleSpec.from_spec({"requestsPerSecond": 0})


def test_the_worker_follows_spec_throttle_as_it_changes() -> None:
    throttle = Throttle()
    job = {"spec": {"parallelism": 2, "throttle": {"bytesPerSecond": "8Mi", "requestsPerSecond": 10}}}
    _follow_throttle(job, throttle, "ns", "job")
    assert throttle.limits == (4 * 2**20, 5.0)
    _follow_throttle({"spec": {"parallelism": 2, "throttle": {"bytesPerSecond": "oops"}}}, throttle, "ns", "job")
    assert throttle.limits == (4 * 2**20, 5.0)  # a value the API server would refuse changes nothing
    _follow_throttle({"spec": {"parallelism": 2}}, throttle, "ns", "job")
    assert throttle.limits == (None, None)
