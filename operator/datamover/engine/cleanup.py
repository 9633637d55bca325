"""Closing every multipart upload of ours on the keys a worker intended to upload to: no fragment escapes.

Called by the engine itself (after an object's upload completes or stops, and when a create failed), by a worker's
successor for the intents its predecessor recorded, and by the operator's janitor for the intents in status. "Ours"
is narrow on purpose, because another tool may be writing the same bucket: an upload on exactly an intended key,
initiated at or after the intent's `since` minus CLOCK_SKEW_ALLOWANCE. Never an upload on another key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from datamover.backends.base import ErrorKind, MultipartUploadRef, ObjectStore, StoreError
from datamover.engine.api import CLOCK_SKEW_ALLOWANCE, IntentCleanup, OpenUpload, UploadIntent
from datamover.engine.fsm import kv

log = logging.getLogger("datamover.engine")

# List, abort what is ours, list again to confirm: S3 documents that an abort racing a part upload may have to be
# repeated, so a key counts as resolved only when a listing shows nothing of ours on it.
CONFIRM_ROUNDS = 3


def uploads_of_ours(store: ObjectStore, intent: UploadIntent) -> list[MultipartUploadRef]:
    """Open uploads on exactly intent.key initiated at or after intent.since - CLOCK_SKEW_ALLOWANCE.

    Lists with the exact key as prefix (MinIO lists nothing for a folder prefix while an upload is open below it)
    and keeps only refs on that very key (the prefix also matches "key-longer").
    """
    earliest = intent.since - CLOCK_SKEW_ALLOWANCE
    return [ref for ref in store.list_multipart_uploads(intent.key)
            if ref.key == intent.key and ref.initiated >= earliest]


def close_intent(store: ObjectStore, intent: UploadIntent) -> list[OpenUpload]:
    """Abort every upload of ours on intent.key until a listing confirms none is left; returns those aborted.

    Raises StoreError if the store cannot be listed or an upload cannot be aborted (NOT_FOUND counts as closed).
    """
    aborted: list[OpenUpload] = []
    for _ in range(CONFIRM_ROUNDS):
        found = uploads_of_ours(store, intent)
        if not found:
            return aborted
        for ref in found:
            try:
                store.abort_multipart(ref.key, ref.upload_id)
            except StoreError as error:
                if error.kind is not ErrorKind.NOT_FOUND:
                    raise
            log.info(kv(event="intended_upload_aborted", bucket=store.bucket, key=ref.key, upload_id=ref.upload_id,
                        initiated=ref.initiated.isoformat()))
            aborted.append(OpenUpload(store.bucket, ref.key, ref.upload_id))
    if uploads_of_ours(store, intent):
        raise StoreError(ErrorKind.TRANSIENT, f"uploads still listed after {CONFIRM_ROUNDS} aborts on "
                                              f"{store.describe(intent.key)}")
    return aborted


def close_intended_uploads(store: ObjectStore, intents: Iterable[UploadIntent]) -> IntentCleanup:
    """For each intent, abort every upload of ours still open on its key and confirm none is left.

    Only for keys no live worker is uploading to (a successor, the janitor once workers are gone, or the engine for
    a key whose own upload it has just completed or aborted): an upload in progress on an intended key is "ours" and
    would be aborted. Never raises for store errors: an intent that could not be closed is returned in `unresolved`
    with the error, so the caller keeps it recorded and tries again later.
    """
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
    return IntentCleanup(resolved=tuple(resolved), unresolved=tuple(unresolved), aborted=tuple(aborted))
