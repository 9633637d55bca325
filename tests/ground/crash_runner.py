"""A worker stand-in for the crash matrix: runs `datamover.engine.migrate()` and SIGKILLs itself at a chosen place.

    DM_CRASH_SPEC='{"source": {...}, "destination": {...}, "mode": "move", "kill": "between_parts", "occurrence": 3,
                    "record": "/tmp/.../record.json", "options": {...}}' python -m tests.ground.crash_runner

The spec travels in the environment (it holds credentials; argv is visible in ps). `kill` is a checkpoint name
(killed the `occurrence`-th time any thread reaches it), "on_upload_opened" (killed inside that sink call, before the
upload ID is recorded: the worst case, as when a status patch has not happened yet), or "none" (the parent kills it
after a delay, or not at all). With "ledger" (a file path) in the spec, stand-ins in several processes share one
listing through it (tests.ground.ledger_file), each with its own options.shard_index. Its last lines say the
outcome, the object counts and the LIST requests it sent per side. The sink stands in for the worker's status
record: every upload intent (before CreateMultipartUpload) and every upload ID is written to `record` as JSON and
fsynced before the engine goes on, so what the file says survives the kill exactly as a durable status record
would. Prints one line per event for the trial's log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from datamover.backends import StoreConfig, open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.gcs import GcsConfig
from datamover.backends.s3 import S3Config, S3Store
from datamover.engine import AbortSignal, MigrationOptions, OpenUpload, Progress, migrate
from tests.ground.ledger_file import FileLedgerStore


def die(where: str) -> None:
    print(f"KILL {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class DurableRecord:
    """Intents and uploads, rewritten atomically (tmp file, fsync, rename, fsync dir) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, list[dict[str, str]]] = {"intents": [], "cleared": [], "opened": [], "closed": []}
        self._write()

    def add(self, kind: str, entry: dict[str, str]) -> None:
        with self.lock:
            self.data[kind].append(entry)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as file:
            json.dump(self.data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _intent_entry(intent: Any) -> dict[str, str]:
    return {"key": str(intent.key), "since": intent.since.isoformat()}


class RecordingSink:
    """The status record's stand-in; kills the process inside on_upload_opened when asked."""

    def __init__(self, record: DurableRecord, kill: str, occurrence: int) -> None:
        self.record = record
        self.kill = kill
        self.occurrence = occurrence
        self.opened = 0
        self.lock = threading.Lock()

    def on_progress(self, progress: Progress) -> None:
        pass

    def on_upload_intent(self, intent: Any) -> None:
        self.record.add("intents", _intent_entry(intent))
        print(f"INTENT {intent.key}", flush=True)

    def on_intent_cleared(self, intent: Any) -> None:
        self.record.add("cleared", _intent_entry(intent))

    def on_upload_opened(self, upload: OpenUpload) -> None:
        with self.lock:
            self.opened += 1
            fire = self.kill == "on_upload_opened" and self.opened == self.occurrence
        if fire:
            die(f"on_upload_opened #{self.occurrence} {upload.key}")
        self.record.add("opened", {"bucket": upload.bucket, "key": upload.key, "upload_id": upload.upload_id})
        print(f"OPENED {upload.key} {upload.upload_id}", flush=True)

    def on_upload_closed(self, upload: OpenUpload) -> None:
        self.record.add("closed", {"bucket": upload.bucket, "key": upload.key, "upload_id": upload.upload_id})


def killer(kill: str, occurrence: int) -> AbortSignal:
    hits = 0
    lock = threading.Lock()

    def hook(name: str, key: str | None) -> None:
        nonlocal hits
        if name != kill:
            return
        with lock:
            hits += 1
            fire = hits == occurrence
        if fire:
            die(f"{name} #{occurrence} {key}")

    return AbortSignal(on_checkpoint=hook)


# A side's "kind" names its backend config (absent: s3), so the same stand-in crashes uploads to any store.
CONFIG_KINDS: dict[str, type[S3Config] | type[AzureBlobConfig] | type[GcsConfig]] = {
    "s3": S3Config, "azureBlob": AzureBlobConfig, "gcs": GcsConfig,
}


def store_config(raw: dict[str, Any]) -> StoreConfig:
    fields = dict(raw)
    return CONFIG_KINDS[fields.pop("kind", "s3")](**fields)


def main() -> int:
    spec = json.loads(os.environ["DM_CRASH_SPEC"])
    record = DurableRecord(Path(spec["record"]))
    source = open_store(store_config(spec["source"]))
    destination = open_store(store_config(spec["destination"]))
    options = MigrationOptions(remain_source=spec["mode"] == "copy", **spec["options"])
    sink = RecordingSink(record, spec["kill"], spec["occurrence"])
    requests: dict[str, int] = {}
    for side, store in (("source", source), ("destination", destination)):
        def count(model: Any, side: str = side, **_: Any) -> None:
            name = f"{side}.{model.name}"
            requests[name] = requests.get(name, 0) + 1  # one thread lists per side; a lost count is harmless

        if isinstance(store, S3Store):  # LISTs are counted on S3 only (the shared-listing tests' bound)
            store.client.meta.events.register("before-call.s3.ListObjectsV2", count)
    ledger = FileLedgerStore(Path(spec["ledger"])) if spec.get("ledger") else None
    print("STARTED", flush=True)
    result = migrate(source, destination, options, killer(spec["kill"], spec["occurrence"]), sink, ledger)
    print(f"FINISHED {result.outcome.value} {result.error}", flush=True)
    print(f"PROGRESS migrated={result.progress.objects_migrated} skipped={result.progress.objects_skipped} "
          f"excluded={result.progress.objects_excluded}", flush=True)
    print(f"REQUESTS {json.dumps(requests)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
