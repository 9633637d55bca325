"""Where spec.keysFrom's keys come from: an earlier job's report, a manifest (one key per line) or an S3 Inventory CSV.

Each worker reads the whole source of keys as a stream (a manifest or inventory is never held in memory whole; a
report is, as its keys' last lines decide) and keeps its share (engine.migrate hashes each key). Keys are full
source keys, as the report's `key`, a manifest line and an inventory's key column all are.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Iterator, Sequence
from urllib.parse import unquote_plus

from datamover.backends.base import ObjectStore
from datamover.engine.report import FAILED, failed_keys, object_lines, read_report


class KeysFormat(enum.StrEnum):
    """spec.keysFrom.format."""

    REPORT = "report"  # an earlier job's report (engine.report): its keys whose last line has one of the actions
    LINES = "lines"  # one key per line, UTF-8; blank lines are skipped
    S3_INVENTORY_CSV = "s3InventoryCsv"  # bucket,key[,...], keys URL-encoded; gzip-compressed when named *.gz


def manifest_keys(store: ObjectStore, key: str) -> Iterator[str]:
    """One key per line of the manifest object `key` (a key cannot hold a line break in this format)."""
    return (line for line in object_lines(store, key) if line.strip())


def inventory_keys(store: ObjectStore, key: str) -> Iterator[str]:
    """The key column (the second) of an S3 Inventory CSV file, URL-decoded."""
    for row in csv.reader(object_lines(store, key)):
        if len(row) >= 2 and row[1]:
            yield unquote_plus(row[1])


def report_keys(store: ObjectStore, prefix: str, actions: Sequence[str] = (FAILED,)) -> list[str]:
    """The keys of the report under `prefix` whose last line has one of `actions` (by default: failed)."""
    return failed_keys(read_report(store, prefix), actions)


def read_keys(store: ObjectStore, format: KeysFormat, key: str, actions: Sequence[str] = (FAILED,)) -> Iterator[str]:
    """The keys `format` names: from the report under the store's prefix, or the manifest object `key`. Lazy: the
    store is first read when the engine asks for the first key (so its errors end the run as listing errors do)."""
    if format is KeysFormat.REPORT:
        yield from report_keys(store, store.prefix, actions)
    elif format is KeysFormat.LINES:
        yield from manifest_keys(store, key)
    else:
        yield from inventory_keys(store, key)
