"""`datamover-worker`: runs the engine on this pod's share of the job and reports into status.workers[<index>].

Abort reaches the engine three ways, all turned into one AbortSignal: spec.abort (watched, so it is seen within a
second), the MigrationJob being deleted, and SIGTERM (the kubelet's notice, e.g. when the operator suspends the Job).
The same watch carries spec.throttle into the engine's Throttle as it changes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from datamover import kubeapi
from datamover.api import (
    ENV_INDEX,
    ENV_MEMORY_LIMIT,
    ENV_NAME,
    ENV_NAMESPACE,
    ENV_POD,
    EXIT_PERMANENT_FAILURE,
    HEARTBEAT_SECONDS,
    Location,
    MigrationSpec,
    Mode,
    SpecError,
    ThrottleSpec,
    credential_env,
    now_rfc3339,
    parse_time,
    report_status,
    worker_reports,
)
from datamover.backends import open_store
from datamover.backends.base import MiB
from datamover.engine import (
    MIN_BUFFER_BUDGET,
    AbortSignal,
    MigrationOptions,
    MigrationResult,
    OpenUpload,
    Outcome,
    Throttle,
    UploadIntent,
    WorkerState,
    close_leftovers,
    migrate,
)
from datamover.engine.keys import read_keys
from datamover.engine.report import ReportWriter
from datamover.locations import store_config
from datamover.worker.ledger import StatusLedgerStore
from datamover.worker.reporting import StatusReporter

log = logging.getLogger("datamover.worker")


def _credentials(side: str, location: Location, env: Mapping[str, str]) -> dict[str, str]:
    keys = location.secret_keys.all
    return {key: env[credential_env(side, key)] for key in keys if env.get(credential_env(side, key))}


# Error codes that mean the credentials were refused: S3's (HEAD requests report AccessDenied as a bare 403),
# Azure's, and the HTTP statuses the GCS backend reports.
_CREDENTIAL_CODES = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                               "ExpiredToken", "Credentials", "401", "AuthenticationFailed", "AuthorizationFailure",
                               "AuthorizationPermissionMismatch", "InvalidAuthenticationInfo",
                               "InsufficientAccountPermissions"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "ContainerNotFound"})


def failure_reason(result: MigrationResult) -> str:
    """The condition reason for a failed worker: what a person should go and fix."""
    if result.fatal_code in _MISSING_BUCKET_CODES:
        return "BucketNotFound"
    if result.fatal_code in _CREDENTIAL_CODES:
        return "CredentialsRejected"
    if result.fatal_kind == "transient":
        return "EndpointUnreachable"
    if result.fatal_code or result.fatal_kind:
        return "StoreRejected"
    return "ObjectsFailed" if result.progress.objects_failed else "WorkerFailed"


# What the worker needs besides its buffers: the interpreter, the store clients, a page of listing, the report.
_BASELINE_MEMORY = 128 * MiB
_MAX_BUFFER_BUDGET = 1024 * MiB


def buffer_budget(env: Mapping[str, str]) -> int:
    """The bytes of object and part buffers this worker may hold at once, from its container's memory limit.

    Half of what the baseline leaves, because a read is briefly held twice while its chunks are joined; capped, as
    a container without a limit is told the node's whole memory. Without the variable (run outside a pod), the
    engine's default.
    """
    raw = env.get(ENV_MEMORY_LIMIT, "")
    if not raw.isdigit():
        return MigrationOptions.buffer_budget
    return max(MIN_BUFFER_BUDGET, min(_MAX_BUFFER_BUDGET, (int(raw) - _BASELINE_MEMORY) // 2))


def _abort_reason(obj: Mapping[str, Any]) -> str | None:
    """Why this worker must stop now, if it must: an abort, a deletion, or a suspension (which stops the same way:
    at the next checkpoint, with every open upload aborted; a resume starts the shard again)."""
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return "MigrationJob deleted"
    if (obj.get("spec") or {}).get("abort"):
        return "spec.abort"
    if (obj.get("spec") or {}).get("suspend"):
        return "spec.suspend"
    return None


def _follow_throttle(obj: Mapping[str, Any], throttle: Throttle, namespace: str, name: str) -> None:
    """Apply spec.throttle as it is now (this worker's share of it), if it changed."""
    spec = obj.get("spec") or {}
    try:
        limits = ThrottleSpec.from_spec(spec.get("throttle") or {}).per_worker(int(spec.get("parallelism") or 1))
    except (SpecError, ValueError, TypeError) as error:  # the API server validates; keep the last good limits
        log.warning("event=throttle-ignored job=%s/%s error=%r", namespace, name, error)
        return
    if limits != throttle.limits:
        throttle.set(*limits)
        log.info("event=throttle job=%s/%s bytes_per_second=%s requests_per_second=%s", namespace, name, *limits)


def _watch_spec(api: kubeapi.Client, namespace: str, name: str, abort: AbortSignal,
                throttle: Throttle) -> None:
    """Follow this one MigrationJob (the Role allows nothing wider): spec.throttle as it changes, until abort is
    requested."""
    while not abort.requested:
        try:
            # No resourceVersion: each watch starts with the object as it is (an ADDED event), so nothing said while
            # the last one was down is missed.
            for event in api.watch(kubeapi.MIGRATION_JOBS, namespace, field_selector=f"metadata.name={name}",
                                   timeout_seconds=60):
                reason = "MigrationJob deleted" if event["type"] == "DELETED" else _abort_reason(event["object"])
                if reason:
                    abort.request(reason)
                    return
                _follow_throttle(event["object"], throttle, namespace, name)
        except Exception as error:  # a dropped watch must not end the worker: re-watch after a pause
            log.warning("event=watch-error job=%s/%s error=%r", namespace, name, error)
            threading.Event().wait(1)


def _heartbeat(reporter: StatusReporter) -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS / 2)
        reporter.beat()


def run(env: Mapping[str, str] = os.environ) -> int:
    namespace, name, index = env[ENV_NAMESPACE], env[ENV_NAME], int(env.get(ENV_INDEX, "0"))
    api = kubeapi.shared()  # KUBECONFIG, else ~/.kube/config, else in-cluster
    body = api.get(kubeapi.MIGRATION_JOBS, namespace, name)
    spec = MigrationSpec.from_spec(body["spec"])

    previous = worker_reports(body).get(index)
    if previous is not None and previous.state is WorkerState.SUCCEEDED:
        # A resumed job's new Job runs every index again; this shard had finished before the suspension.
        log.info("event=shard-already-done job=%s/%s index=%d", namespace, name, index)
        return 0

    abort = AbortSignal()
    signal.signal(signal.SIGTERM, lambda *_: abort.request("SIGTERM"))
    if reason := _abort_reason(body):
        abort.request(reason)
    # Always there, unlimited unless spec.throttle says otherwise, so that a limit set later applies at once.
    throttle = Throttle(*spec.throttle.per_worker(spec.parallelism))
    threading.Thread(target=_watch_spec, args=(api, namespace, name, abort, throttle), daemon=True).start()

    options = MigrationOptions(
        remain_source=spec.remain_source,
        concurrency=spec.concurrency,
        part_concurrency=spec.part_concurrency,
        part_size=spec.part_size,
        buffer_budget=buffer_budget(env),
        shard_index=index,
        shard_count=spec.parallelism,
        stall_timeout=float(spec.stall_timeout_seconds),
        filter=spec.filter.anchored(parse_time(body["metadata"]["creationTimestamp"])),
        throttle=throttle,
        storage_class=spec.destination.storage_class,
        plan=spec.mode is Mode.PLAN,
    )
    # One connection per object in flight plus one per part in flight, or urllib3 throws connections away.
    pool = max(32, options.concurrency * (options.part_concurrency + 1))
    stall = float(spec.stall_timeout_seconds)
    source = open_store(store_config(spec.source, _credentials("source", spec.source, env),
                                     max_pool_connections=pool, stall_timeout=stall))
    destination = open_store(store_config(spec.destination, _credentials("destination", spec.destination, env),
                                          max_pool_connections=pool, stall_timeout=stall))

    # A previous attempt of this index (a killed pod) may have left uploads open: close them before resuming. Every
    # key it intended to upload to is listed too (so also uploads whose ID never reached status); what could not be
    # closed or checked stays recorded.
    still_open: list[OpenUpload] = []
    still_intended: list[UploadIntent] = []
    if previous and (previous.open_uploads or previous.upload_intents):
        cleanup = close_leftovers(destination, previous.open_uploads, previous.upload_intents)
        still_open = list(cleanup.still_open)
        still_intended = [intent for intent, _ in cleanup.unresolved]
        log.info("event=leftovers job=%s/%s index=%d closed=%d open=%d aborted=%d unresolved=%d", namespace, name,
                 index, len(cleanup.closed), len(still_open), len(cleanup.aborted), len(still_intended))
    reporter = StatusReporter(api, namespace, name, index, env.get(ENV_POD, ""), still_open, still_intended)

    reporter.start(aborting=abort.requested)
    threading.Thread(target=_heartbeat, args=(reporter,), name="heartbeat", daemon=True).start()
    report = _open_report(api, body, spec, index, env)
    # The workers share one listing of the source through status.listing (engine.shards).
    try:
        result = migrate(source, destination, options, abort, reporter, StatusLedgerStore(api, namespace, name),
                         report, _keys(spec, env))
    finally:
        if report is not None:
            summary = report.close()
            log.info("event=report-closed job=%s/%s index=%d location=%s written=%d dropped=%d", namespace, name,
                     index, report.location, summary.lines_written, summary.lines_dropped)
    final = {
        Outcome.SUCCEEDED: WorkerState.SUCCEEDED,
        Outcome.ABORTED: WorkerState.ABORTED,
        Outcome.FAILED: WorkerState.FAILED,
    }[result.outcome]
    message = result.error or (abort.reason or "" if final is WorkerState.ABORTED else "")
    reporter.finish(final, result.progress, message, failure_reason(result) if final is WorkerState.FAILED else "",
                    plan=result.plan)
    log.info("event=finished job=%s/%s index=%d state=%s message=%r", namespace, name, index, final.value, message)
    if final is not WorkerState.FAILED:
        return 0
    # Nothing migrated and an error: the configuration is wrong (bucket, credentials, endpoint); retrying won't help.
    per_object = result.progress.objects_failed or result.progress.objects_retained
    return EXIT_PERMANENT_FAILURE if result.error and not per_object else 1


def _keys(spec: MigrationSpec, env: Mapping[str, str]) -> Iterator[str] | None:
    """spec.keysFrom's keys (read as the engine takes them), or None: list the source."""
    if spec.keys_from is None:
        return None
    location = spec.keys_from.location
    store = open_store(store_config(location, _credentials("keysFrom", location, env)))
    return read_keys(store, spec.keys_from.format, spec.keys_from.key, spec.keys_from.actions)


def _open_report(api: kubeapi.Client, body: Mapping[str, Any], spec: MigrationSpec, index: int,
                 env: Mapping[str, str]) -> ReportWriter | None:
    """The writer of this worker's part of spec.report (None without one), after naming its place in status."""
    meta = body["metadata"]
    location = spec.report_location(meta["namespace"], meta["name"], meta["uid"])
    if location is None:
        return None
    side = spec.report.credentials_side
    store = open_store(store_config(location, _credentials(side, location, env)))
    # Every worker writes the same value; a failed patch only hides the place from status (the worker's log says it).
    try:
        api.patch(kubeapi.MIGRATION_JOBS, meta["namespace"], meta["name"],
                  {"status": {"report": report_status(location)}}, content_type=kubeapi.MERGE_PATCH,
                  subresource="status")
    except Exception as error:
        log.warning("event=report-status-failed job=%s/%s error=%r", meta["namespace"], meta["name"], error)
    # A run name that sorts by start time: a restarted worker's lines come after (and win over) its predecessor's.
    run = now_rfc3339().replace("-", "").replace(":", "") + "-" + (env.get(ENV_POD, "") or "local")[-5:]
    return ReportWriter(store, location.prefix, index, run)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
