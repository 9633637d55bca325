"""The job's listing ledger (engine.shards) in status.listing of its MigrationJob: the workers share one listing.

The workers may already read their MigrationJob and patch its status, and nothing else: the ledger lives there, with
no new object or permission. A write is a compare-and-swap: a JSON patch that first tests status.listing.version (the
API server applies a JSON patch whole or not at all); the very first write, when there is no ledger yet, is a merge
patch made conditional on the object's resourceVersion. The operator only merge-patches other status fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from datamover import kubeapi
from datamover.kubeapi import JSON_PATCH, MERGE_PATCH, ApiError

log = logging.getLogger("datamover.worker")

ATTEMPTS = 10  # tries of one request through API-server errors (not conflicts: those are the caller's to resolve)


class StatusLedgerStore:
    """engine.LedgerStore in status.listing: `version` counts the ledger's writes."""

    def __init__(self, api: kubeapi.Client, namespace: str, name: str) -> None:
        self._api, self._namespace, self._name = api, namespace, name
        self._resource_version = ""  # of the object at the last load, for the first write's precondition

    def _retrying(self, what: str, call: Any) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                return call()
            except ApiError as error:
                if error.status in (409, 422) or attempt + 1 == ATTEMPTS:
                    raise
                log.warning("event=ledger-request-failed job=%s/%s what=%s status=%s attempt=%d", self._namespace,
                            self._name, what, error.status, attempt)
            except Exception as error:  # the API server unreachable (requests' errors)
                if attempt + 1 == ATTEMPTS:
                    raise
                log.warning("event=ledger-request-failed job=%s/%s what=%s error=%r attempt=%d", self._namespace,
                            self._name, what, error, attempt)
            time.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        body = cast(Mapping[str, Any], self._retrying("get", lambda: self._api.get(
            kubeapi.MIGRATION_JOBS, self._namespace, self._name)))
        self._resource_version = str(body.get("metadata", {}).get("resourceVersion", ""))
        listing = (body.get("status") or {}).get("listing")
        if not listing:
            return None, None
        document = dict(listing)
        version = document.pop("version")
        return document, str(version)

    def swap(self, document: dict[str, Any], version: str | None) -> str | None:
        if version is None:
            written = 1
            body: Any = {"metadata": {"resourceVersion": self._resource_version},
                         "status": {"listing": {**document, "version": written}}}
            content_type = MERGE_PATCH
        else:
            written = int(version) + 1
            body = [{"op": "test", "path": "/status/listing/version", "value": int(version)},
                    {"op": "replace", "path": "/status/listing", "value": {**document, "version": written}}]
            content_type = JSON_PATCH
        try:
            self._retrying("patch", lambda: self._api.patch(
                kubeapi.MIGRATION_JOBS, self._namespace, self._name, body, content_type=content_type,
                subresource="status"))
        except ApiError as error:
            if error.status == 409:
                return None  # the object's resourceVersion moved under the first write
            # A failed JSON-patch test is a bare 422 "Invalid" that does not say which operation failed: it was a
            # conflict if the ledger's version is no longer the one we tested, else the patch itself is wrong.
            if error.status == 422 and version is not None and self.load()[1] != version:
                return None
            raise
        return str(written)
