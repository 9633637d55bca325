"""spec.notify: announce a job's final phase to a webhook, as a CloudEvent, without ever holding the job back.

The call is made from its own small thread pool after the final phase is written, retried with back-off, and its
outcome is written to status.notification and the Notified condition; a webhook that cannot be reached never changes
the migration's phase. Delivery is at least once: an operator restarted mid-call calls again, with the same event id
(the job's uid and phase), so a receiver can drop the duplicate.

The event is built by hand (structured-mode CloudEvents JSON is eight fields; the `cloudevents` SDK would add a
dependency to the image for that) and sent with urllib (one POST with a timeout, from a thread: nothing to gain
from an HTTP client library or from kopf's event loop).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from datamover.api import GROUP, VERSION, MigrationStatus, progress_status

log = logging.getLogger("datamover.operator")

CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPE = "io.datamover.migrationjob.finished"
ATTEMPTS = 5
FIRST_BACKOFF_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10.0


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook (said without repeating it: it may carry a token), or None."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return "is not an http(s) URL"
    return None


def cloud_event(body: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON announcing `body`'s final phase."""
    meta = body["metadata"]
    status = MigrationStatus.of(body)
    progress = progress_status(status.workers)
    phase = status.phase.value if status.phase else ""
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "source": f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/migrationjobs/{meta['name']}",
        "id": f"{meta.get('uid', '')}/{phase}",
        "time": (body.get("status") or {}).get("completionTime") or "",
        "subject": f"{meta['namespace']}/{meta['name']}",
        "datacontenttype": "application/json",
        "data": {
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "phase": phase,
            "reason": status.reason,
            "message": status.message,
            "startTime": (body.get("status") or {}).get("startTime"),
            "completionTime": (body.get("status") or {}).get("completionTime"),
            "progress": {k: progress[k] for k in ("objectsTotal", "objectsMigrated", "objectsSkipped",
                                                   "objectsFailed", "objectsExcluded", "objectsRetained",
                                                   "bytesTotal", "bytesMigrated", "bytesSkipped")},
        },
    }


def deliver(url: str, event: Mapping[str, Any], *, attempts: int = ATTEMPTS,
            sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int, str]:
    """POST `event` until a 2xx answer or `attempts` run out; returns (delivered, attempts made, last error)."""
    data = json.dumps(event).encode()
    error = ""
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as answer:
                if 200 <= answer.status < 300:
                    return True, attempt, ""
                error = f"HTTP {answer.status}"
        except urllib.error.HTTPError as failure:
            error = f"HTTP {failure.code}"
            if 400 <= failure.code < 500 and failure.code not in (408, 429):
                return False, attempt, error  # the receiver refuses this event: asking again will not help
        except (urllib.error.URLError, OSError) as failure:
            reason = getattr(failure, "reason", failure)
            error = f"{type(reason).__name__}: {reason}"
        if attempt < attempts:
            sleep(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return False, attempts, error
