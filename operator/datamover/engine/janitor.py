"""The one janitor: closes every upload in parts that a worker may have left, so no fragment escapes a stop.

Called by the engine itself (after an object's upload completes or stops, and when a create failed), by a worker's
successor for what its predecessor recorded, and by the operator's janitor for what status holds. Two records lead
to leftovers: upload IDs that were announced, and upload intents (a key, and the time from which an upload of ours
may exist on it), recorded before every create so that an upload whose ID was never seen is found too. "Ours" is
narrow on purpose, because another tool may be writing the same bucket: an upload on exactly an intended key,
initiated at or after the intent's `since` minus CLOCK_SKEW_ALLOWANCE. Never an upload on another key.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from datamover.backends.base import ErrorKind, ObjectStore, OpenUpload, StoreError
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")

# An upload of ours is one on an intended key initiated at or after intent.since minus this: `since` is the worker's
# clock (rounded down to the second when recorded), `initiated` the store's, and the two may disagree by this much.
# Five minutes is the clock skew S3 itself tolerates in signed requests (RequestTimeTooSkewed), so a worker whose
# requests are accepted at all is within it.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

# List, abort what is ours, list again to confirm: S3 documents that an abort racing a part upload may have to be
# repeated, so a key counts as resolved only when a listing shows nothing of ours on it.
CONFIRM_ROUNDS = 3


@dataclass(frozen=True)
class UploadIntent:
    """"An upload in parts may be created on `key` from `since` on": recorded durably BEFORE the create, so whoever
    cleans up after a crash (the worker's successor, the operator's janitor) finds every upload of ours, including one
    whose create response was lost, by listing the key's uploads."""

    key: str
    since: dt.datetime  # aware UTC, whole seconds (the status record's precision)

    def __post_init__(self) -> None:
        if self.since.tzinfo is None:
            raise ValueError("UploadIntent.since must be timezone-aware (UTC)")


@dataclass(frozen=True)
class Cleanup:
    """What close_leftovers did. The caller forgets what is closed or resolved and keeps the rest recorded."""

    closed: tuple[OpenUpload, ...] = ()  # recorded uploads now closed: aborted here, or already gone
    still_open: tuple[OpenUpload, ...] = ()  # recorded uploads the store would not abort (yet)
    aborted: tuple[OpenUpload, ...] = ()  # uploads of ours found open on intended keys, and aborted
    resolved: tuple[UploadIntent, ...] = ()  # intents with no upload of ours left on their key
    unresolved: tuple[tuple[UploadIntent, str], ...] = ()  # (intent, error naming endpoint, bucket and key)


def uploads_of_ours(store: ObjectStore, intent: UploadIntent) -> list[OpenUpload]:
    """Open uploads on exactly intent.key initiated at or after intent.since - CLOCK_SKEW_ALLOWANCE.

    An upload the store gives no time for counts as not ours: a leak is recoverable, aborting another tool's is not.
    """
    earliest = intent.since - CLOCK_SKEW_ALLOWANCE
    return [upload for upload in store.list_uploads(intent.key)
            if upload.initiated is not None and upload.initiated >= earliest]


def _abort(store: ObjectStore, upload: OpenUpload) -> None:
    """Abort one upload; one already gone (completed or aborted before) counts as closed."""
    try:
        store.abort_upload(upload)
    except StoreError as error:
        if error.kind is not ErrorKind.NOT_FOUND:
            raise


def close_intent(store: ObjectStore, intent: UploadIntent) -> list[OpenUpload]:
    """Abort every upload of ours on intent.key until a listing confirms none is left; returns those aborted.

    Raises StoreError if the store cannot be listed or an upload cannot be aborted.
    """
    aborted: list[OpenUpload] = []
    for _ in range(CONFIRM_ROUNDS):
        found = uploads_of_ours(store, intent)
        if not found:
            return aborted
        for upload in found:
            _abort(store, upload)
            log.info(kv(event="intended_upload_aborted", bucket=store.bucket, key=upload.key,
                        upload_id=upload.upload_id, initiated=upload.initiated and upload.initiated.isoformat()))
            aborted.append(upload)
    if uploads_of_ours(store, intent):
        raise StoreError(ErrorKind.TRANSIENT, f"uploads still listed after {CONFIRM_ROUNDS} aborts on "
                                              f"{store.describe(intent.key)}")
    return aborted


def close_leftovers(
    store: ObjectStore, uploads: Iterable[OpenUpload] = (), intents: Iterable[UploadIntent] = (),
) -> Cleanup:
    """Abort the recorded `uploads`, and for each intent every upload of ours still open on its key, confirmed.

    Only for keys no live worker is uploading to (a successor, the janitor once workers are gone, or the engine for
    a key whose own upload it has just completed or aborted): an upload in progress on an intended key is "ours" and
    would be aborted. Never raises for store errors: what could not be closed or checked is returned (`still_open`,
    `unresolved` with the error), so the caller keeps it recorded and tries again later.
    """
    closed: list[OpenUpload] = []
    still_open: list[OpenUpload] = []
    for upload in uploads:
        try:
            _abort(store, upload)
        except StoreError as error:
            log.warning(kv(event="janitor_abort_failed", key=upload.key, upload_id=upload.upload_id,
                           error=error.message))
            still_open.append(upload)
            continue
        log.info(kv(event="janitor_upload_closed", bucket=upload.bucket, key=upload.key, upload_id=upload.upload_id))
        closed.append(upload)
    resolved: list[UploadIntent] = []
    unresolved: list[tuple[UploadIntent, str]] = []
    aborted: list[OpenUpload] = []
    for intent in intents:
        try:
            aborted += close_intent(store, intent)
        except StoreError as error:
            log.warning(kv(event="intent_cleanup_failed", bucket=store.bucket, key=intent.key, error=error.message))
            unresolved.append((intent, error.message))
            continue
        resolved.append(intent)
    return Cleanup(closed=tuple(closed), still_open=tuple(still_open), aborted=tuple(aborted),
                   resolved=tuple(resolved), unresolved=tuple(unresolved))
