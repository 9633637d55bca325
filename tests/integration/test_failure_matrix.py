"""The abort contract under hostile conditions, as a seeded matrix judged by tests/ground/checker.py.

- crash matrix: a worker stand-in (tests.ground.crash_runner) is SIGKILLed at a named checkpoint occurrence (including
  right after CreateMultipartUpload returns), inside on_upload_opened, or after a random delay; its successor closes
  the recorded intents, the checker judges, a full re-run must finish the job exactly;
- fault matrix: migrations through tests/ground/faultproxy.py (resets mid-body, 503 SlowDown, latency, the
  CreateMultipartUpload response cut after the server acted, a blackhole);
- random-time aborts of copies and moves, including while listing with objects in flight.

Every trial is reproducible: the seed is in the pytest header and in every failure message; replay with
`--matrix-seed=N` (or DATAMOVER_MATRIX_SEED=N), scale with `--matrix-trials=N`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import datamover.engine as engine
from datamover.backends import open_store
from datamover.backends.base import ObjectStore
from datamover.backends.s3 import S3Config
from datamover.engine import AbortSignal, MigrationOptions, MigrationResult, OpenUpload, Outcome, Progress, migrate
from tests.ground.checker import Report, Side, capture_inventory, check
from tests.ground.faultproxy import FaultProxy, Request, Rule, fault_proxy
from tests.ground.plugin_matrix import matrix_trials, seed_of
from tests.ground.s3 import S3Server, empty_and_delete_bucket

pytestmark = pytest.mark.ground

MiB = 1024 * 1024
SOURCE_PREFIX, DESTINATION_PREFIX = "data/", "moved/"
OPTIONS: dict[str, Any] = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 3,
                           "part_concurrency": 3, "chunk_size": MiB, "progress_interval": 0.2}
LIST_PAGE_SIZE = 3
CHILD_TIMEOUT = 120.0  # a worker stand-in that neither dies nor finishes in this long is a hung engine

# Content headers and user metadata a user would notice if a copy lost or changed them.
HEADERS: dict[str, Any] = {
    "ContentType": "application/x-matrix", "ContentEncoding": "identity", "CacheControl": "max-age=3600",
    "ContentDisposition": 'attachment; filename="report 1.bin"', "ContentLanguage": "de-CH",
    "Expires": "Wed, 21 Oct 2037 07:28:00 GMT", "Metadata": {"owner": "team-a", "tier": "cold"},
}
# key (relative) -> size; large keys sort first so they are in flight while the next listing page is requested.
DATASET = {"big-a.bin": 5 * MiB + 1, "big-b.bin": 6 * MiB, "big-c.bin": 10 * MiB + 5,
           "small 0.txt": 1000, "smäll-1.txt": 40_000, "small/2/deep": 3, "small-3-empty": 0, "small-4": 77_777,
           "small-5": 12_345}
WITH_HEADERS = {"big-a.bin", "big-c.bin", "small 0.txt", "small-4"}


# -- the ground of one trial ----------------------------------------------------------------------------------

@dataclass
class Ground:
    cloud_a: S3Server
    cloud_b: S3Server
    template: str  # the dataset on cloud_a; every trial works on a server-side clone of it
    made: list[tuple[S3Server, str]]

    def new_bucket(self, server: S3Server) -> str:
        name = f"m-{uuid.uuid4().hex[:16]}"
        server.client().create_bucket(Bucket=name)
        self.made.append((server, name))
        return name

    def clone_source(self) -> str:
        bucket = self.new_bucket(self.cloud_a)
        client = self.cloud_a.client()
        for key in DATASET:
            client.copy_object(Bucket=bucket, Key=SOURCE_PREFIX + key,
                               CopySource={"Bucket": self.template, "Key": SOURCE_PREFIX + key})
        return bucket


@pytest.fixture(scope="module")
def ground(cloud_a: S3Server, cloud_b: S3Server) -> Iterator[Ground]:
    made: list[tuple[S3Server, str]] = []
    result = Ground(cloud_a, cloud_b, "", made)
    result.template = result.new_bucket(cloud_a)
    client = cloud_a.client()
    rng = random.Random(20240601)  # the bytes do not matter to the matrix, only their identity
    for key, size in DATASET.items():
        body = rng.randbytes(size)
        extra = HEADERS if key in WITH_HEADERS else {}
        client.put_object(Bucket=result.template, Key=SOURCE_PREFIX + key, Body=body, **extra)
    yield result
    for server, bucket in reversed(made):
        empty_and_delete_bucket(server, bucket)


@dataclass
class Trial:
    """One trial's two buckets, the stores the engine uses, the checker's view of them and the inventory."""

    ground: Ground
    source_bucket: str
    destination_bucket: str
    source: Side
    destination: Side
    inventory: dict[str, Any]

    def config(self, side: str, **overrides: Any) -> dict[str, Any]:
        server = self.ground.cloud_a if side == "source" else self.ground.cloud_b
        fields: dict[str, Any] = {
            "bucket": self.source_bucket if side == "source" else self.destination_bucket,
            "prefix": SOURCE_PREFIX if side == "source" else DESTINATION_PREFIX,
            "endpoint": server.endpoint, "region": server.region, "access_key_id": server.access_key,
            "secret_access_key": server.secret_key, "addressing_style": "path", "max_attempts": 3,
            "list_page_size": LIST_PAGE_SIZE,
        }
        fields.update(overrides)
        return fields

    def store(self, side: str, **overrides: Any) -> ObjectStore:
        return open_store(S3Config(**self.config(side, **overrides)))

    def judge(self, mode: str) -> Report:
        return check(self.source, self.destination, mode, self.inventory)


def new_trial(ground: Ground) -> Trial:
    source_bucket, destination_bucket = ground.clone_source(), ground.new_bucket(ground.cloud_b)
    a, b = ground.cloud_a, ground.cloud_b
    source = Side(a.endpoint, a.access_key, a.secret_key, source_bucket, SOURCE_PREFIX)
    destination = Side(b.endpoint, b.access_key, b.secret_key, destination_bucket, DESTINATION_PREFIX)
    inventory = capture_inventory(source)
    assert set(inventory) == set(DATASET), "the clone of the dataset is incomplete"
    return Trial(ground, source_bucket, destination_bucket, source, destination, inventory)


# -- the engine's cleanup API (engine-safety); fail clearly where it has not landed -------------------------------

MISSING_API = "the engine-safety contract has not landed: datamover.engine has no {}"


def upload_intent(key: str, since: datetime) -> Any:
    cls = getattr(engine, "UploadIntent", None)
    assert cls is not None, MISSING_API.format("UploadIntent")
    return cls(key=key, since=since)


def successor_cleanup(store: ObjectStore, intents: list[Any], recorded: list[OpenUpload]) -> list[str]:
    """What a successor (or the janitor) does: close every upload of ours on a recorded intent's key.

    Only the intents, not the recorded IDs: the matrix checks that intents alone leave nothing behind.
    """
    cleanup = engine.close_leftovers(store, intents=intents)
    return [f"the successor could not close the uploads on {intent.key!r}: {error}"
            for intent, error in cleanup.unresolved]


class MatrixSink:
    """An in-process status record: intents, uploads and the last progress (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intents: list[Any] = []
        self.cleared: list[Any] = []
        self.opened: list[OpenUpload] = []
        self.closed: list[OpenUpload] = []
        self.last: Progress | None = None

    def on_progress(self, progress: Progress) -> None:
        with self.lock:
            self.last = progress

    def on_upload_intent(self, intent: Any) -> None:
        with self.lock:
            self.intents.append(intent)

    def on_intent_cleared(self, intent: Any) -> None:
        with self.lock:
            self.cleared.append(intent)

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self.lock:
            self.opened.append(upload)

    def on_upload_closed(self, upload: OpenUpload) -> None:
        with self.lock:
            self.closed.append(upload)

    def uncleared(self) -> list[Any]:
        with self.lock:
            return [intent for intent in self.intents if intent not in self.cleared]


def options(mode: str, **overrides: Any) -> MigrationOptions:
    return MigrationOptions(remain_source=mode == "copy", **{**OPTIONS, **overrides})


def rerun_completes(trial: Trial, mode: str) -> list[str]:
    """A successor's full re-run: it must succeed and leave every key exactly migrated, 0 open uploads."""
    result = migrate(trial.store("source"), trial.store("destination"), options(mode), AbortSignal(), MatrixSink())
    problems = [] if result.outcome is Outcome.SUCCEEDED else [f"re-run ended {result.outcome.value}: {result.error}"]
    report = trial.judge(mode)
    found = problems + report.problems(complete=True)
    return [*found, report.render()] if found else []


# -- crash matrix ---------------------------------------------------------------------------------------------

# Kill point -> the highest occurrence the dataset reaches on every run (0: the parent kills after a delay).
KILL_POINTS = {
    "before_list_page": 3, "before_object": len(DATASET), "after_create_multipart": 3, "on_upload_opened": 3,
    "between_parts": 7, "between_chunks": 30, "before_delete_source": len(DATASET), "random_delay": 0,
}
DELAY_RANGE = (0.0, 2.5)  # seconds after the stand-in says STARTED


@dataclass(frozen=True)
class CrashTrial:
    index: int
    mode: str
    kill: str
    occurrence: int
    delay: float
    seed: int

    def __str__(self) -> str:
        where = f"after {self.delay:.3f}s" if self.kill == "random_delay" else f"{self.kill} #{self.occurrence}"
        return f"crash trial {self.index} (seed {self.seed}): {self.mode}, SIGKILL at {where}"


def plan_crash_trials(seed: int, count: int) -> list[CrashTrial]:
    """Every kill point in both modes first (before_delete_source only moves), then seeded random picks."""
    rng = random.Random(seed)
    cover = [(mode, kill) for kill in KILL_POINTS for mode in ("copy", "move")
             if not (kill == "before_delete_source" and mode == "copy")]
    picks = cover[:count] + [
        (rng.choice(("copy", "move")), rng.choice(["after_create_multipart", "on_upload_opened", "random_delay",
                                                    *KILL_POINTS]))
        for _ in range(max(0, count - len(cover)))
    ]
    picks = [(mode, "before_object" if kill == "before_delete_source" and mode == "copy" else kill)
             for mode, kill in picks]
    rng.shuffle(picks)
    return [CrashTrial(index, mode, kill, rng.randint(1, KILL_POINTS[kill]) if KILL_POINTS[kill] else 0,
                       round(rng.uniform(*DELAY_RANGE), 3), seed)
            for index, (mode, kill) in enumerate(picks)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "crash_trial" in metafunc.fixturenames:
        trials = plan_crash_trials(seed_of(metafunc.config), matrix_trials(metafunc.config))
        metafunc.parametrize("crash_trial", trials,
                             ids=[f"{t.index:02d}-{t.mode}-{t.kill}-{t.occurrence or t.delay}" for t in trials])


def run_stand_in(trial: Trial, crash: CrashTrial, record: Path) -> tuple[int, str]:
    """Run the worker stand-in until it dies or finishes; returns (exit code, its output)."""
    spec = {"source": trial.config("source"), "destination": trial.config("destination"), "mode": crash.mode,
            "kill": crash.kill if crash.kill != "random_delay" else "none", "occurrence": crash.occurrence,
            "record": str(record), "options": OPTIONS}
    env = {**os.environ, "DM_CRASH_SPEC": json.dumps(spec)}
    child = subprocess.Popen([sys.executable, "-m", "tests.ground.crash_runner"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.rstrip())
            if line.startswith("STARTED"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if crash.kill == "random_delay" and started.wait(CHILD_TIMEOUT) and child.poll() is None:
            time.sleep(crash.delay)  # the seeded moment of the kill, not a wait for a condition
            child.send_signal(signal.SIGKILL)
        child.wait(CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        reader.join(10)
    return child.returncode, "\n".join(lines[-40:])


def test_the_crash_matrix_covers_every_checkpoint() -> None:
    assert set(engine.CHECKPOINTS) | {"after_create_multipart"} <= set(KILL_POINTS), engine.CHECKPOINTS
    assert {t.kill for t in plan_crash_trials(1, 20)} == set(KILL_POINTS)
    assert plan_crash_trials(7, 20) == plan_crash_trials(7, 20)  # a seed replays the same trials


def test_crash_trial(ground: Ground, crash_trial: CrashTrial, tmp_path: Path) -> None:
    trial = new_trial(ground)
    record_path = tmp_path / "record.json"
    code, output = run_stand_in(trial, crash_trial, record_path)
    context = f"{crash_trial}\n--- stand-in output (tail) ---\n{output}"
    killed = code == -signal.SIGKILL
    if crash_trial.kill != "random_delay":
        assert killed, f"{context}\nthe kill point was never reached (exit code {code})"
    else:
        assert killed or "FINISHED" in output, f"{context}\nthe stand-in neither finished nor was killed ({code})"
    record = json.loads(record_path.read_text())

    # The successor: close every upload on a recorded intent that was not cleared, as the janitor would.
    cleared = {(c["key"], c["since"]) for c in record["cleared"]}
    intents = [upload_intent(i["key"], datetime.fromisoformat(i["since"])) for i in record["intents"]
               if (i["key"], i["since"]) not in cleared]
    problems: list[str] = []
    if record["opened"] and not record["intents"]:
        problems.append("uploads were opened but no intent was recorded before CreateMultipartUpload")
    closed = {(u["key"], u["upload_id"]) for u in record["closed"]}
    recorded = [OpenUpload(u["bucket"], u["key"], u["upload_id"]) for u in record["opened"]
                if (u["key"], u["upload_id"]) not in closed]
    problems += successor_cleanup(trial.store("destination"), intents, recorded)
    after_crash = trial.judge(crash_trial.mode)
    problems += after_crash.problems(both_places_ok=True)
    rerun = rerun_completes(trial, crash_trial.mode)
    assert not problems and not rerun, (
        f"{context}\n--- record ---\n{json.dumps(record)[:2000]}\n--- after crash + cleanup ---\n"
        f"{after_crash.render()}\n" + "\n".join([*problems, "--- after the re-run ---", *rerun]))


# -- fault matrix ---------------------------------------------------------------------------------------------

def migrate_through(trial: Trial, mode: str, proxy: FaultProxy, side: str = "destination",
                    **store_overrides: Any) -> tuple[MigrationResult, MatrixSink]:
    sink = MatrixSink()
    stores = {"source": trial.store("source"), "destination": trial.store("destination")}
    stores[side] = trial.store(side, endpoint=proxy.endpoint, **store_overrides)
    result = migrate(stores["source"], stores["destination"], options(mode), AbortSignal(), sink)
    return result, sink


def _body(request: Request) -> bool:
    return request.has_body()


def _get(request: Request) -> bool:
    return request.method == "GET" and "uploadId" not in request.query and "list-type" not in request.query


# Each fault is bounded below what the retries absorb, so `succeeded` is the right expectation: at most 2 faults of a
# kind in a trial (botocore's 5 attempts, S3Config's default, see PROXIED; part_read_attempts 3 for broken downloads).
PROXIED = {"max_attempts": 5}
FAULTS: dict[str, tuple[str, Callable[[random.Random], list[Rule]]]] = {
    # name -> (side behind the proxy, seeded rules). The first rule of each fires on the first matching request, so
    # every trial is sure to meet its fault; the seeded one after it adds more at random, within what retries absorb.
    "reset_mid_request_body": ("destination", lambda rng: [
        Rule("reset_request", match=_body, limit=1),
        Rule("reset_request", match=_body, probability=rng.uniform(0.15, 0.35), limit=1)]),
    "reset_mid_response_body": ("source", lambda rng: [
        Rule("reset_response", match=_get, limit=1),
        Rule("reset_response", match=_get, probability=rng.uniform(0.15, 0.35), limit=1)]),
    "slowdown_503": ("destination", lambda rng: [
        Rule("slowdown", limit=1),
        Rule("slowdown", probability=rng.uniform(0.1, 0.3), limit=1)]),
    "latency": ("destination", lambda rng: [
        Rule("latency", delay=rng.uniform(0.01, 0.1), limit=1),
        Rule("latency", probability=0.5, delay=rng.uniform(0.01, 0.1))]),
    "cut_create_multipart_response": ("destination", lambda rng: [
        Rule("cut_response", match=Request.is_create_multipart, limit=rng.randint(1, 2))]),
}
FAULT_CASES = [pytest.param(name, mode, id=f"{name}-{mode}") for name in FAULTS for mode in ("copy", "move")]


@pytest.mark.parametrize(("fault", "mode"), FAULT_CASES)
def test_fault_trial(ground: Ground, matrix_seed: int, fault: str, mode: str) -> None:
    trial = new_trial(ground)
    rng = random.Random(f"{matrix_seed}-{fault}-{mode}")
    side, make_rules = FAULTS[fault]
    rules = make_rules(rng)
    server = ground.cloud_a if side == "source" else ground.cloud_b
    with fault_proxy(server.endpoint, rules, seed=rng.randrange(2**32)) as proxy:
        result, _ = migrate_through(trial, mode, proxy, side, **PROXIED)
        injected = list(proxy.log.faults)
    shown = ", ".join(f"{r.action}(p={r.probability:.2f}, limit={r.limit}, delay={r.delay:.3f}, applied={r.applied})"
                      for r in rules)
    context = f"fault trial {fault} {mode} (seed {matrix_seed}): {side} behind the proxy, {shown}\ninjected: {injected}"
    assert injected, f"{context}\nthe proxy injected no fault: the trial proves nothing"
    report = trial.judge(mode)
    assert result.outcome is Outcome.SUCCEEDED, f"{context}\n{result.error}\n{report.render()}"
    assert not report.problems(complete=True), f"{context}\n{report.render()}"


def stall_option() -> str:
    names = [f.name for f in dataclasses.fields(MigrationOptions) if "stall" in f.name]
    assert names, ("MigrationOptions has no stall timeout (stallTimeoutSeconds, issue 8 item 6): a blackholed "
                   "endpoint is bounded only by read timeouts x attempts (the engine-safety contract has not landed)")
    return names[0]


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_blackholed_destination_fails_naming_the_endpoint_and_leaves_nothing(
    ground: Ground, matrix_seed: int, mode: str,
) -> None:
    name = stall_option()
    trial = new_trial(ground)
    rng = random.Random(f"{matrix_seed}-blackhole-{mode}")
    # Blackhole from the first part upload on: uploads are open when the endpoint goes silent.
    rules = [Rule("blackhole", match=Request.is_upload_part)]
    sink = MatrixSink()
    outcome: list[MigrationResult] = []
    with fault_proxy(ground.cloud_b.endpoint, rules, seed=rng.randrange(2**32)) as proxy:
        source, destination = trial.store("source"), trial.store("destination", endpoint=proxy.endpoint)
        run_options = options(mode, **{name: 3})
        runner = threading.Thread(target=lambda: outcome.append(
            migrate(source, destination, run_options, AbortSignal(), sink)), daemon=True)
        runner.start()
        runner.join(120)  # a hang guard, not a timing assertion: the stall bound under test is 3 s
        hung = runner.is_alive()
        proxy.set_rules([])
    assert not hung, f"blackhole {mode} (seed {matrix_seed}): migrate() did not return within 120 s"
    result = outcome[0]
    assert proxy.log.count("blackhole") >= 1
    assert result.outcome is Outcome.FAILED, result
    assert result.error is not None and proxy.endpoint in result.error, result.error
    # The janitor's turn, directly against the destination: close what the stalled worker could not.
    missing = successor_cleanup(trial.store("destination"), sink.uncleared(),
                                [u for u in sink.opened if u not in sink.closed])
    report = trial.judge(mode)
    assert not missing and not report.problems(both_places_ok=False), f"seed {matrix_seed} {missing}\n{report.render()}"


# -- random-time aborts -----------------------------------------------------------------------------------------

ABORT_TRIALS = 8


@dataclass(frozen=True)
class AbortTrial:
    index: int
    mode: str
    kind: str  # "timer" (after a seeded delay) or "listing" (at a before_list_page with objects in flight)
    delay: float
    page: int

    def __str__(self) -> str:
        when = f"after {self.delay:.3f}s" if self.kind == "timer" else f"at before_list_page #{self.page} in flight"
        return f"abort trial {self.index}: {self.mode}, abort {when}"


def plan_abort_trials(seed: int) -> list[AbortTrial]:
    rng = random.Random(f"{seed}-aborts")
    return [AbortTrial(index, ("copy", "move")[index % 2], ("timer", "listing")[(index // 2) % 2],
                       round(rng.uniform(0.05, 1.5), 3), rng.randint(2, 3)) for index in range(ABORT_TRIALS)]


@pytest.mark.parametrize("index", range(ABORT_TRIALS))
def test_random_time_abort(ground: Ground, matrix_seed: int, index: int) -> None:
    plan = plan_abort_trials(matrix_seed)[index]
    trial = new_trial(ground)
    sink = MatrixSink()
    hits = 0
    seen_in_flight: list[tuple[str, ...]] = []

    def at_listing(name: str, key: str | None) -> None:
        nonlocal hits
        if name != "before_list_page" or abort.requested:
            return
        with sink.lock:
            in_flight = sink.last.in_flight if sink.last else ()
        if in_flight:
            hits += 1
            if hits == plan.page - 1:
                seen_in_flight.append(in_flight)
                abort.request(f"matrix: {plan}")

    abort = AbortSignal(on_checkpoint=at_listing if plan.kind == "listing" else None)
    if plan.kind == "timer":
        timer = threading.Timer(plan.delay, abort.request, args=(f"matrix: {plan}",))
        timer.start()
    result = migrate(trial.store("source"), trial.store("destination"), options(plan.mode, progress_interval=0),
                     abort, sink)
    if plan.kind == "timer":
        timer.cancel()
    context = f"{plan} (seed {matrix_seed}); result {result.outcome.value} {result.error}"
    if plan.kind == "listing":
        assert seen_in_flight, f"{context}: no listing page was requested while objects were in flight"
    assert result.outcome in (Outcome.ABORTED, Outcome.SUCCEEDED), context
    report = trial.judge(plan.mode)
    assert not report.problems(both_places_ok=False), f"{context}\n{report.render()}"
    if result.outcome is Outcome.ABORTED:
        assert report.count("untouched") > 0 or plan.kind == "timer", f"{context}\n{report.render()}"
