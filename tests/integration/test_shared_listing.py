"""One listing per job against two real MinIO servers: workers split a job's keys without overlap, LIST requests stay
within 1.1 x keys/page per side, and a worker SIGKILLed mid-range and restarted finishes its range.

The checker (tests/ground/checker.py, no code shared with the engine) judges every key; the worker stand-ins are
separate processes (tests/ground/crash_runner.py) sharing the ledger through a file, as pods share status.listing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datamover.backends import open_store
from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import (
    AbortSignal,
    MemoryLedgerStore,
    MigrationOptions,
    Outcome,
    UploadIntent,
    close_leftovers,
    migrate,
)
from tests.ground.checker import Side, capture_inventory, check
from tests.ground.ledger_file import FileLedgerStore
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server
from tests.unit import RecordingSink

MiB = 1024 * 1024
PAGE = 10  # keys per LIST page: small, so a few hundred keys make many pages and ranges
SMALL_KEYS = 150
REPO = Path(__file__).resolve().parents[2]
OPTIONS: dict[str, Any] = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 4,
                           "part_concurrency": 4, "progress_interval": 0.5}


@dataclass
class Job:
    source_bucket: str
    destination_bucket: str
    cloud_a: S3Server
    cloud_b: S3Server

    def config(self, side: str) -> dict[str, Any]:
        server = self.cloud_a if side == "source" else self.cloud_b
        return {"bucket": self.source_bucket if side == "source" else self.destination_bucket,
                "prefix": "data/" if side == "source" else "copy/", "endpoint": server.endpoint,
                "region": server.region, "access_key_id": server.access_key, "secret_access_key": server.secret_key,
                "addressing_style": "path", "max_attempts": 3, "list_page_size": PAGE}

    def side(self, side: str) -> Side:
        server = self.cloud_a if side == "source" else self.cloud_b
        config = self.config(side)
        return Side(server.endpoint, server.access_key, server.secret_key, config["bucket"], config["prefix"])


@pytest.fixture
def job(cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory) -> Iterator[Job]:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    client = cloud_a.client()
    # Two multipart-sized objects among them, so a kill can land with an upload open.
    for index in range(2):
        client.put_object(Bucket=source_bucket, Key=f"data/big-{index}.bin", Body=os.urandom(6 * MiB + index))
    for index in range(SMALL_KEYS):
        client.put_object(Bucket=source_bucket, Key=f"data/small-{index:04d}.txt", Body=os.urandom(64 + index),
                          ContentType="text/plain", Metadata={"n": str(index)})
    client.put_object(Bucket=source_bucket, Key="outside/the-prefix", Body=b"not ours")
    yield Job(source_bucket, destination_bucket, cloud_a, cloud_b)


def test_a_job_split_across_workers_copies_every_key_once_with_one_listing(job: Job) -> None:
    inventory = capture_inventory(job.side("source"))
    keys = len(inventory)
    workers = 4
    ledger = MemoryLedgerStore()
    requests: dict[str, list[str]] = {"lists.source": [], "lists.destination": [], "writes": []}
    lock = threading.Lock()
    results: list[Any] = [None] * workers

    def run(index: int) -> None:
        source = open_store(S3Config(**job.config("source")))
        destination = open_store(S3Config(**job.config("destination")))
        assert isinstance(source, S3Store) and isinstance(destination, S3Store)
        for side, store in (("source", source), ("destination", destination)):
            store.client.meta.events.register(
                "before-call.s3.ListObjectsV2",
                lambda side=side, **_: _append(lock, requests[f"lists.{side}"], side))
        # Writes counted on the wire, by key: small PUTs bypass the client's parameter building (s3_direct).
        bucket_path = f"/{job.destination_bucket}/"
        for client in {id(destination.client): destination.client,
                       id(destination.create_client): destination.create_client}.values():
            for operation in ("PutObject", "CompleteMultipartUpload"):
                client.meta.events.register(
                    f"before-send.s3.{operation}",
                    lambda request, **_: _append(lock, requests["writes"], urllib.parse.unquote(
                        urllib.parse.urlsplit(request.url).path).removeprefix(bucket_path)))
        options = MigrationOptions(shard_index=index, shard_count=workers, **OPTIONS)
        results[index] = migrate(source, destination, options, AbortSignal(), RecordingSink(), ledger)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert [result.outcome for result in results] == [Outcome.SUCCEEDED] * workers
    report = check(job.side("source"), job.side("destination"), "copy", inventory)
    assert not report.problems(complete=True), report.render()
    assert sorted(requests["writes"]) == sorted(f"copy/{key}" for key in inventory)  # each key written once
    bound = 1.1 * keys / PAGE
    assert len(requests["lists.source"]) == math.ceil(keys / PAGE) <= bound
    assert len(requests["lists.destination"]) <= bound
    assert sum(1 for result in results if result.progress.objects_migrated) > 1  # the work was shared


def _append(lock: threading.Lock, target: list[str], item: str) -> None:
    with lock:
        target.append(item)


def _stand_in(job: Job, tmp_path: Path, index: int, kill: str, occurrence: int, mode: str,
              options: dict[str, Any]) -> tuple[int, list[str]]:
    spec = {"source": job.config("source"), "destination": job.config("destination"), "mode": mode, "kill": kill,
            "occurrence": occurrence, "record": str(tmp_path / f"record-{index}.json"),
            "ledger": str(tmp_path / "ledger.json"),
            "options": {**options, "shard_index": index, "shard_count": 3}}
    child = subprocess.run([sys.executable, "-m", "tests.ground.crash_runner"], cwd=REPO, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "DM_CRASH_SPEC": json.dumps(spec)})
    return child.returncode, (child.stdout + child.stderr).splitlines()


def _requests(lines: list[str]) -> dict[str, int]:
    found = [line for line in lines if line.startswith("REQUESTS ")]
    return dict(json.loads(found[-1][len("REQUESTS "):])) if found else {}


def test_a_worker_killed_mid_range_and_restarted_finishes_its_range_in_a_move(job: Job, tmp_path: Path) -> None:
    inventory = capture_inventory(job.side("source"))
    keys = len(inventory)
    options = {**OPTIONS, "progress_interval": 0.5}
    # Worker 1 starts alone, so it claims the first pages; it is killed as its 6th object starts (mid-range: the big
    # objects sort first, so uploads may be open). Workers 0 and 2 then finish the rest of the listing.
    code, lines = _stand_in(job, tmp_path, 1, "before_object", 6, "move", options)
    assert code == -signal.SIGKILL, "\n".join(lines[-30:])
    ledger, _ = FileLedgerStore(tmp_path / "ledger.json").load()
    assert ledger is not None and ledger["open"].get("1"), ledger  # its claimed ranges stay open
    left_open = [tuple(raw) for raw in ledger["open"]["1"]]
    # What its successor does first (the worker, from status.workers[1]): close the uploads the kill left open.
    record = json.loads((tmp_path / "record-1.json").read_text())
    cleared = {(c["key"], c["since"]) for c in record["cleared"]}
    intents = [UploadIntent(key=i["key"], since=dt.datetime.fromisoformat(i["since"])) for i in record["intents"]
               if (i["key"], i["since"]) not in cleared]
    close_leftovers(open_store(S3Config(**job.config("destination"))), intents=intents)
    after_kill = check(job.side("source"), job.side("destination"), "move", inventory)
    assert not after_kill.problems(both_places_ok=True), after_kill.render()
    for index in (0, 2):
        code, lines = _stand_in(job, tmp_path, index, "none", 0, "move", options)
        assert code == 0 and any(line.startswith("FINISHED succeeded") for line in lines), "\n".join(lines[-30:])
    mid = check(job.side("source"), job.side("destination"), "move", inventory)
    assert mid.count("migrated") < keys, "worker 1's open range must still be unfinished before its restart"

    # The restarted pod resumes its open ranges.
    code, lines = _stand_in(job, tmp_path, 1, "none", 0, "move", options)
    assert code == 0 and any(line.startswith("FINISHED succeeded") for line in lines), "\n".join(lines[-30:])
    # It listed again only its open ranges (one LIST each: a range is one page), and claimed nothing new.
    assert _requests(lines).get("source.ListObjectsV2") == len(left_open), lines[-5:]

    final = check(job.side("source"), job.side("destination"), "move", inventory)
    assert not final.problems(complete=True), final.render()
    ledger, _ = FileLedgerStore(tmp_path / "ledger.json").load()
    assert ledger is not None and ledger["finished"] and not ledger["open"], ledger


def _kill_plan(seed: int) -> tuple[str, str, int]:
    """A seeded kill of worker 1: where (a checkpoint, including before_list_page, where it may hold the listing
    lock), which occurrence, and copy or move."""
    rng = random.Random(seed)
    kill, most = rng.choice([("before_list_page", 3), ("before_object", 12), ("between_parts", 3),
                             ("after_create_multipart", 2), ("before_delete_source", 8)])
    mode = "move" if kill == "before_delete_source" else rng.choice(["copy", "move"])
    return kill, mode, rng.randint(1, most)


@pytest.mark.parametrize("seed", [101, 202, 303, 404])
def test_seeded_kills_of_one_worker_leave_every_key_migrated_once_the_job_is_resumed(
    job: Job, tmp_path: Path, seed: int,
) -> None:
    kill, mode, occurrence = _kill_plan(seed)
    inventory = capture_inventory(job.side("source"))
    pages = math.ceil(len(inventory) / PAGE)
    # A short stall timeout, so that a lock left by the dead worker is taken over after 2 x 4 s.
    options = {**OPTIONS, "stall_timeout": 4.0}
    code, lines = _stand_in(job, tmp_path, 1, kill, occurrence, mode, options)
    context = f"seed={seed} kill={kill}#{occurrence} mode={mode}\n" + "\n".join(lines[-20:])
    assert code == -signal.SIGKILL, context
    record = json.loads((tmp_path / "record-1.json").read_text())
    cleared = {(c["key"], c["since"]) for c in record["cleared"]}
    intents = [UploadIntent(key=i["key"], since=dt.datetime.fromisoformat(i["since"])) for i in record["intents"]
               if (i["key"], i["since"]) not in cleared]
    close_leftovers(open_store(S3Config(**job.config("destination"))), intents=intents)
    after_kill = check(job.side("source"), job.side("destination"), mode, inventory)
    assert not after_kill.problems(both_places_ok=True), f"{context}\n{after_kill.render()}"
    ledger, _ = FileLedgerStore(tmp_path / "ledger.json").load()
    assert ledger is not None, context
    reopened = len(ledger["open"].get("1", []))
    lists = 0
    for index in (0, 2, 1):  # the others finish the listing (taking a dead holder's lock over), then 1 resumes
        code, lines = _stand_in(job, tmp_path, index, "none", 0, mode, options)
        assert code == 0 and any(line.startswith("FINISHED succeeded") for line in lines), (
            f"{context}\nworker {index}:\n" + "\n".join(lines[-30:]))
        lists += _requests(lines).get("source.ListObjectsV2", 0)
    final = check(job.side("source"), job.side("destination"), mode, inventory)
    assert not final.problems(complete=True), f"{context}\n{final.render()}"
    ledger, _ = FileLedgerStore(tmp_path / "ledger.json").load()
    assert ledger is not None and ledger["finished"] and not ledger["open"], ledger
    # After the kill, the pages left were listed once each, plus one LIST per range the restart listed again.
    assert lists <= pages + reopened, f"{context}\n{lists} LISTs for {pages} pages, {reopened} reopened"
