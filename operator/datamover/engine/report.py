"""The per-object report (spec.report): one JSON line per object, written off the copy path as numbered chunk objects.

Object threads only put a line on a bounded queue (never waiting: when the queue is full the line is dropped and
counted, so a slow or unreachable report store never slows copying); one background thread drains it and writes a
chunk object every `flush_lines` lines or `flush_seconds`, then, on close, a last chunk ending with the summary line.
A crash loses at most the lines not yet flushed. S3 objects cannot be appended to, hence the chunks; readers
(`read_report`) list them in key order. docs/api.md ("spec.report") describes the layout and the line format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datamover.backends.base import ObjectAttributes, ObjectStore, StoreError
from datamover.engine.context import ObjectCopy, b64
from datamover.engine.fsm import ObjectState, kv

log = logging.getLogger("datamover.engine.report")

# What happened to one object, as its report line says (`action`).
COPIED = "copied"
SKIPPED_IDENTICAL = "skipped-identical"
EXCLUDED = "excluded"
DELETED_SOURCE = "deleted-source"  # moved: copied (or found identical), verified, then deleted from the source
FAILED = "failed"
RETAINED = "retained"  # moved, but the source delete failed: in both places
ABORTED = "aborted"  # stopped by abort or a worker-wide error before it reached the destination: untouched
ACTIONS = (COPIED, SKIPPED_IDENTICAL, EXCLUDED, DELETED_SOURCE, FAILED, RETAINED, ABORTED)

CHUNK_SUFFIX = ".jsonl"
CONTENT_TYPE = "application/x-ndjson"
READ_SIZE = 1024 * 1024  # bytes per read when reading a report (or a manifest) back
PUT_ATTEMPTS = 3  # per chunk, on top of the store client's own retries; then the chunk's lines count as lost


def _time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def action_of(copy: ObjectCopy, remain_source: bool) -> str:
    """The report action for an object that ended in `copy.state`."""
    if copy.state is ObjectState.MIGRATED:
        return COPIED if remain_source else DELETED_SOURCE
    return {ObjectState.SKIPPED: SKIPPED_IDENTICAL, ObjectState.RETAINED: RETAINED,
            ObjectState.ABORTED: ABORTED}.get(copy.state, FAILED)


@dataclass(frozen=True)
class ReportSummary:
    """The last line of a worker's report: counts by action, lines dropped or lost, and whether it is complete."""

    worker: int
    started: str
    ended: str
    counts: dict[str, int]
    lines_written: int
    lines_dropped: int  # the queue was full (the copy path never waits) or a chunk could not be written

    def to_line(self) -> dict[str, Any]:
        return {"record": "summary", "worker": self.worker, "started": self.started, "ended": self.ended,
                "counts": self.counts, "linesWritten": self.lines_written, "linesDropped": self.lines_dropped,
                "complete": self.lines_dropped == 0}


class ReportWriter:
    """Writes one worker's report under `prefix` of `store`: `<prefix>worker-<index>/<run>/<n>.jsonl`.

    `run` names this attempt of the worker (a restarted pod writes beside, never over, its predecessor's chunks).
    Thread-safe; `record*` never block. Call `close()` once, when the migration has ended.
    """

    def __init__(self, store: ObjectStore, prefix: str, worker: int, run: str, *, flush_lines: int = 1000,
                 flush_seconds: float = 5.0, max_queued: int = 10000) -> None:
        self._store = store
        self._base = f"{prefix}worker-{worker:04d}/{run}/"
        self._worker = worker
        self._flush_lines = flush_lines
        self._flush_seconds = flush_seconds
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._dropped = 0
        self._written = 0
        self._chunks = 0
        self._started = time.time()
        self._thread = threading.Thread(target=self._drain, name="datamover-report", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        """Where this worker's chunks go (a key prefix of the report store)."""
        return self._base

    def record(self, copy: ObjectCopy, remain_source: bool, started: float, ended: float) -> None:
        """One object that ran through the object machine."""
        info = copy.source_info
        line: dict[str, Any] = {
            "record": "object", "key": copy.source.key, "destinationKey": copy.destination_key,
            "size": info.size if info else copy.source.size, "etag": info.etag if info else copy.source.etag,
            "action": action_of(copy, remain_source), "started": _time(started), "ended": _time(ended),
        }
        if copy.written_etag:
            line["destinationEtag"] = copy.written_etag
        if copy.state in (ObjectState.FAILED, ObjectState.RETAINED):
            line["errorCode"] = copy.error_code or "Error"
            line["error"] = copy.error or ""
        self._put(line)

    def record_excluded(self, key: str, size: int, etag: str) -> None:
        """One object spec.filter did not select (untouched on both sides)."""
        now = _time(time.time())
        self._put({"record": "object", "key": key, "size": size, "etag": etag, "action": EXCLUDED,
                   "started": now, "ended": now})

    def record_failed(self, key: str, error_code: str, error: str) -> None:
        """A key that could not even be looked at (e.g. a listed key gone from the source)."""
        now = _time(time.time())
        self._put({"record": "object", "key": key, "action": FAILED, "errorCode": error_code, "error": error,
                   "started": now, "ended": now})

    def _put(self, line: dict[str, Any]) -> None:
        with self._lock:
            self._counts[str(line["action"])] += 1
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def close(self) -> ReportSummary:
        """Flush what is queued, write the summary line (in the last chunk) and stop the thread."""
        # Waits only while the queue is full (the copy path has ended by now), and only for a thread still draining.
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        self._thread.join()
        return self.summary()

    def summary(self) -> ReportSummary:
        with self._lock:
            return ReportSummary(worker=self._worker, started=_time(self._started), ended=_time(time.time()),
                                 counts=dict(sorted(self._counts.items())), lines_written=self._written,
                                 lines_dropped=self._dropped)

    def _drain(self) -> None:
        pending: list[dict[str, Any]] = []
        deadline = time.monotonic() + self._flush_seconds
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = {}  # the time is up: flush what there is
            if line is None:
                pending.append(self.summary().to_line())
                # Lines of the last chunk count as written in the summary only if the chunk lands.
                self._write(pending, final=True)
                return
            if line:
                pending.append(line)
            if pending and (len(pending) >= self._flush_lines or time.monotonic() >= deadline):
                self._write(pending, final=False)
                pending = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self._flush_seconds

    def _write(self, lines: list[dict[str, Any]], *, final: bool) -> None:
        objects = sum(1 for line in lines if line.get("record") == "object")
        if final:
            # The summary line must count this chunk's lines as written; recompute it as if the PUT lands.
            with self._lock:
                summary = lines[-1]
                summary["linesWritten"] = self._written + objects
                summary["complete"] = summary["linesDropped"] == 0
        body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        self._chunks += 1
        key = f"{self._base}{self._chunks:06d}{CHUNK_SUFFIX}"
        for attempt in range(PUT_ATTEMPTS):
            try:
                self._store.put(key, body, ObjectAttributes(content_type=CONTENT_TYPE),
                                b64(hashlib.md5(body).digest()))
                with self._lock:
                    self._written += objects
                return
            except Exception as error:  # whatever the report store does, the drain thread (and the copy) go on
                message = error.message if isinstance(error, StoreError) else repr(error)
                log.warning(kv(event="report_chunk_failed", key=key, attempt=attempt, error=message))
                time.sleep(min(2.0, 0.2 * 2**attempt))
        with self._lock:
            self._dropped += objects


def read_report(store: ObjectStore, prefix: str) -> Iterator[dict[str, Any]]:
    """Every line of every chunk under `prefix` (all workers, all runs), in key order: objects and summaries."""
    token: str | None = None
    while True:
        page = store.list_page(prefix, token)
        for item in page.objects:
            if item.key.endswith(CHUNK_SUFFIX):
                yield from (json.loads(text) for text in object_lines(store, item.key) if text.strip())
        token = page.next_token
        if token is None:
            return


def object_lines(store: ObjectStore, key: str) -> Iterator[str]:
    """The text lines of object `key`, streamed (never held whole), without their line ends; gunzipped if *.gz."""
    stream = store.open_read(key, None, None, None)
    gunzip = zlib.decompressobj(wbits=31) if key.endswith(".gz") else None
    rest = b""
    try:
        while chunk := stream.read(READ_SIZE):
            *complete, rest = (rest + (gunzip.decompress(chunk) if gunzip else chunk)).split(b"\n")
            yield from (line.rstrip(b"\r").decode() for line in complete)
        rest += gunzip.flush() if gunzip else b""
        yield from (line.rstrip(b"\r").decode() for line in rest.split(b"\n") if line)
    finally:
        stream.close()


def failed_keys(lines: Iterable[Mapping[str, Any]], actions: Sequence[str] = (FAILED,)) -> list[str]:
    """The keys whose last line in a report has one of `actions`, in the report's order, each once.

    A key can have several lines (a restarted worker runs its keys again): the latest run's line decides."""
    last: dict[str, str] = {}
    for line in lines:
        if line.get("record") == "object":
            last.pop(str(line["key"]), None)
            last[str(line["key"])] = str(line["action"])
    return [key for key, action in last.items() if action in actions]
