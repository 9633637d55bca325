"""kopf handlers: observe a MigrationJob and what it owns, ask decisions.decide() what to do, and do it.

One sync daemon per MigrationJob runs the reconcile loop over kopf's live body; every watch event of the object wakes
it, so a patched spec.abort is acted on at once, and a one-second tick covers what raises no event. A deletion
handler runs the same abort path before kopf removes the finalizer. Status is written with merge patches to the
status subresource; spec and metadata are never written (GitOps tools see no drift).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from datamover.api import (
    GROUP,
    LABEL_JOB,
    PLURAL,
    SECRET_KEYS_REQUIRED,
    VERSION,
    Location,
    MigrationSpec,
    Phase,
    SpecError,
    UploadRecord,
    now_rfc3339,
    parse_time,
    progress_status,
    worker_reports,
)
from datamover.backends import open_store
from datamover.controller import resources
from datamover.controller.decisions import Decision, Observation, decide
from datamover.engine import OpenUpload, abort_uploads
from datamover.locations import s3_config

log = logging.getLogger("datamover.operator")

TICK_SECONDS = 1.0
SETTLING_TICK_SECONDS = 0.1
MERGE_PATCH = "application/merge-patch+json"
WORKER_SETTINGS = resources.WorkerSettings.from_env()


@dataclass
class _View:
    """The freshest copy of one MigrationJob: kopf's live body, or our own last write if that is newer."""

    body: Mapping[str, Any]
    last_written: Mapping[str, Any] | None = None

    def current(self) -> Mapping[str, Any]:
        if self.last_written is None:
            return self.body
        live = int(self.body.get("metadata", {}).get("resourceVersion") or 0)
        mine = int(self.last_written.get("metadata", {}).get("resourceVersion") or 0)
        return self.body if live >= mine else self.last_written


def _not_found(error: ApiException) -> bool:
    return bool(error.status == 404)


def _read_secret(namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api().read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def _reference_error(namespace: str, spec: MigrationSpec) -> str | None:
    """The first Secret or key the spec names that is not there, said so that a person can fix it."""
    for side, location in (("source", spec.source), ("destination", spec.destination)):
        if location.secret_name is None:
            continue
        try:
            data = _read_secret(namespace, location.secret_name)
        except ApiException as error:
            if _not_found(error):
                return f"spec.{side}.credentialsSecretRef: Secret {namespace}/{location.secret_name} not found"
            raise
        for key in SECRET_KEYS_REQUIRED:
            if not data.get(key):
                return (
                    f"spec.{side}.credentialsSecretRef: Secret {namespace}/{location.secret_name} "
                    f"has no key {key!r}"
                )
    return None


def _condition_true(obj: Any, kind: str) -> str | None:
    for condition in (obj.status.conditions or []) if obj.status else []:
        if condition.type == kind and condition.status == "True":
            return str(condition.message or condition.reason or kind)
    return None


def _observe(body: Mapping[str, Any], spec: MigrationSpec, *, deleting: bool) -> Observation:
    meta, status = body["metadata"], body.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    phase = Phase(status["phase"]) if status.get("phase") else None
    job_name = resources.child_name(name)
    job = None
    try:
        job = client.BatchV1Api().read_namespaced_job(job_name, namespace)
    except ApiException as error:
        if not _not_found(error):
            raise
    pods = client.CoreV1Api().list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}").items
    alive = sum(1 for pod in pods if (pod.status.phase if pod.status else None) not in ("Succeeded", "Failed"))
    reference_error = None
    if job is None and phase in (None, Phase.PENDING):
        reference_error = _reference_error(namespace, spec)
    requested = status.get("abortRequestedTime")
    return Observation(
        phase=phase,
        abort_requested=spec.abort or deleting,
        parallelism=spec.parallelism,
        grace_seconds=spec.abort_grace_period_seconds,
        now=dt.datetime.now(dt.UTC),
        abort_requested_at=parse_time(requested) if requested else None,
        reference_error=reference_error,
        job_exists=job is not None,
        job_complete=job is not None and _condition_true(job, "Complete") is not None,
        job_failed_message=_condition_true(job, "Failed") if job is not None else None,
        pods_alive=alive,
        workers=worker_reports(status),
    )


def _create(manifest: dict[str, Any]) -> None:
    """Create one owned object; an existing one (an earlier attempt, or a restart) is fine."""
    namespace, kind = manifest["metadata"]["namespace"], manifest["kind"]
    try:
        if kind == "ServiceAccount":
            client.CoreV1Api().create_namespaced_service_account(namespace, manifest)  # type: ignore[arg-type]
        elif kind == "Role":
            client.RbacAuthorizationV1Api().create_namespaced_role(namespace, manifest)  # type: ignore[arg-type]
        elif kind == "RoleBinding":
            client.RbacAuthorizationV1Api().create_namespaced_role_binding(
                namespace, manifest)  # type: ignore[arg-type]
        else:
            client.BatchV1Api().create_namespaced_job(namespace, manifest)  # type: ignore[arg-type]
    except ApiException as error:
        if error.status != 409:
            raise


def _start_workers(body: Mapping[str, Any], spec: MigrationSpec) -> None:
    # The Job goes last: its existence is what tells a restarted operator that the rest is there too.
    for manifest in (
        resources.service_account(body),
        resources.role(body),
        resources.role_binding(body),
        resources.job(body, spec, WORKER_SETTINGS),
    ):
        _create(manifest)


def _stop_workers(namespace: str, name: str, *, kill: bool) -> None:
    job_name = resources.child_name(name)
    try:
        client.BatchV1Api().patch_namespaced_job(job_name, namespace, {"spec": {"suspend": True}})
    except ApiException as error:
        if not _not_found(error):
            raise
    if kill:
        core = client.CoreV1Api()
        for pod in core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}").items:
            try:
                core.delete_namespaced_pod(str(pod.metadata.name if pod.metadata else ""), namespace,
                                           grace_period_seconds=0)
            except ApiException as error:
                if not _not_found(error):
                    raise


def _janitor(body: Mapping[str, Any], spec: MigrationSpec) -> dict[str, Any]:
    """Close every upload the workers may have left: abort the recorded IDs, and list every intended key and abort
    the uploads of ours there (also those whose ID never reached status); returns the status.workers patch."""
    # Imported here so this function stays self-contained (the rest of this module is being rewritten).
    from datamover.api import IntentRecord
    from datamover.engine import UploadIntent, close_intended_uploads

    reports = worker_reports(body.get("status") or {})
    leftovers = {index: r.open_uploads for index, r in reports.items() if r.open_uploads}
    intended = {index: r.upload_intents for index, r in reports.items() if r.upload_intents}
    if not leftovers and not intended:
        return {}
    namespace = body["metadata"]["namespace"]
    destination: Location = spec.destination
    credentials = _read_secret(namespace, destination.secret_name) if destination.secret_name else {}
    store = open_store(s3_config(destination, credentials))
    uploads = [OpenUpload(destination.bucket, u.key, u.upload_id) for ups in leftovers.values() for u in ups]
    closed = {(u.key, u.upload_id) for u in abort_uploads(store, uploads)}
    remaining = {(u.key, u.upload_id) for u in uploads} - closed
    cleanup = close_intended_uploads(store, [UploadIntent(i.key, i.since) for ins in intended.values() for i in ins])
    unresolved = {(intent.key, intent.since) for intent, _ in cleanup.unresolved}
    aborted = len(closed) + len(cleanup.aborted)
    log.info("event=janitor job=%s/%s aborted=%d remaining=%d intents_unresolved=%d", namespace,
             body["metadata"]["name"], aborted, len(remaining), len(unresolved))
    if aborted or remaining or unresolved:
        left = len(remaining) + len(unresolved)
        _event(body, type="Warning" if left else "Normal", reason="UploadsAborted",
               message=f"aborted {aborted} multipart upload(s) the workers left open on {destination.describe()}"
               + (f"; {left} upload(s) or intended key(s) could not be cleaned up yet" if left else ""))
    patch: dict[str, Any] = {}
    for index in set(leftovers) | set(intended):
        entry: dict[str, Any] = {}
        if index in leftovers:
            entry["openUploads"] = [UploadRecord(u.key, u.upload_id).to_status() for u in leftovers[index]
                                    if (u.key, u.upload_id) in remaining]
        if index in intended:
            entry["uploadIntents"] = [IntentRecord(i.key, i.since).to_status() for i in intended[index]
                                      if (i.key, i.since) in unresolved]
        patch[str(index)] = entry
    return patch


def _conditions(current: list[dict[str, Any]], phase: Phase, reason: str, message: str,
                generation: int) -> list[dict[str, Any]]:
    """Kubernetes-style conditions for a phase: Ready (succeeded), Complete (ended), Failed, AbortRequested."""
    wanted = {
        "Ready": phase is Phase.SUCCEEDED,
        "Complete": phase.terminal,
        "Failed": phase is Phase.FAILED,
        "AbortRequested": phase in (Phase.ABORTING, Phase.ABORTED, Phase.CANCELLED),
    }
    existing = {c["type"]: c for c in current}
    now = now_rfc3339()
    result = []
    for kind, truth in wanted.items():
        status = "True" if truth else "False"
        old = existing.get(kind)
        changed = old is None or old.get("status") != status
        result.append({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
        })
    return result


def _patch_status(namespace: str, name: str, status: Mapping[str, Any]) -> Mapping[str, Any]:
    result = client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
    )
    return cast(Mapping[str, Any], result)


def _event(body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)


def _status_for(body: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 0)
    patch: dict[str, Any] = {"observedGeneration": generation}
    progress = progress_status(worker_reports(status))
    if progress != status.get("progress") and status.get("workers"):
        patch["progress"] = progress
    if decision.phase is None:
        return patch if len(patch) > 1 else {}
    phase = decision.phase
    patch.update(
        phase=phase.value,
        message=decision.message,
        conditions=_conditions(status.get("conditions") or [], phase, decision.reason, decision.message, generation),
    )
    now = now_rfc3339()
    if phase is Phase.RUNNING and not status.get("startTime"):
        patch["startTime"] = now
    if phase is Phase.ABORTING or (phase is Phase.CANCELLED and not status.get("abortRequestedTime")):
        patch["abortRequestedTime"] = status.get("abortRequestedTime") or now
    if phase.terminal:
        patch["completionTime"] = now
    return patch


def reconcile(body: Mapping[str, Any], *, deleting: bool = False) -> tuple[Decision, Mapping[str, Any] | None]:
    """One step for one MigrationJob; returns what was decided and the object as written (if it was)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = MigrationSpec.from_spec(body.get("spec") or {})
    except SpecError as error:
        invalid = Decision(Phase.FAILED, "InvalidSpec", str(error))
        if (body.get("status") or {}).get("phase") in {p.value for p in Phase if p.terminal}:
            return Decision(), None
        written = _patch_status(namespace, name, _status_for(body, invalid))
        _event(body, type="Warning", reason=invalid.reason, message=invalid.message)
        return invalid, written

    decision = decide(_observe(body, spec, deleting=deleting))
    if decision.create_job:
        _start_workers(body, spec)
    if decision.stop_job:
        _stop_workers(namespace, name, kill=decision.kill_pods)
    patch = _status_for(body, decision)
    if decision.run_janitor:
        workers_patch = _janitor(body, spec)
        if workers_patch:
            patch["workers"] = workers_patch
    if not patch:
        return decision, None
    written = _patch_status(namespace, name, patch)
    if decision.phase is not None:
        log.info("event=phase job=%s/%s phase=%s reason=%s", namespace, name, decision.phase.value, decision.reason)
        event_type = "Warning" if decision.phase is Phase.FAILED else "Normal"
        _event(body, type=event_type, reason=decision.reason, message=decision.message)
    return decision, written


def _workers_settled(body: Mapping[str, Any]) -> bool:
    parallelism = int((body.get("spec") or {}).get("parallelism", 1))
    reports = worker_reports(body.get("status") or {})
    return all(index in reports and reports[index].state.final for index in range(parallelism))


@kopf.on.event(GROUP, VERSION, PLURAL)
def wake(memo: kopf.Memo, **_: Any) -> None:
    """Any change to the MigrationJob (spec.abort, a worker's report) wakes its loop at once instead of next tick."""
    event = memo.get("wake")
    if isinstance(event, threading.Event):
        event.set()


@kopf.daemon(GROUP, VERSION, PLURAL, initial_delay=0, cancellation_timeout=5)
def supervise(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """The reconcile loop of one MigrationJob, from creation (or operator start) until it reaches a final phase."""
    view = _View(body)
    woken = memo.setdefault("wake", threading.Event())
    while not stopped:
        current = view.current()
        if current.get("metadata", {}).get("deletionTimestamp"):
            return  # the deletion handler takes over
        phase = (current.get("status") or {}).get("phase")
        if phase and Phase(phase).terminal:
            return
        written: Mapping[str, Any] | None = None
        try:
            written = reconcile(current)[1]
        except ApiException as error:
            log.warning("event=reconcile-error job=%s/%s status=%s reason=%s", body.metadata.namespace,
                        body.metadata.name, error.status, error.reason)
        if written is not None:
            view.last_written = written
        # The tick only matters for what raises no MigrationJob event: pods going away, the grace period running out.
        # Once every worker has reported its final state, only its pod's exit is awaited: look again soon.
        woken.wait(SETTLING_TICK_SECONDS if _workers_settled(view.current()) else TICK_SECONDS)
        woken.clear()


@kopf.on.delete(GROUP, VERSION, PLURAL)
def finalize(body: kopf.Body, **_: Any) -> None:
    """Deleting a MigrationJob aborts it first: workers stop, open uploads are aborted, then the finalizer goes."""
    phase = (body.get("status") or {}).get("phase")
    if phase and Phase(phase).terminal:
        spec = MigrationSpec.from_spec(body.get("spec") or {})
        if _janitor(body, spec):
            log.info("event=janitor-on-delete job=%s/%s", body.metadata.namespace, body.metadata.name)
        return
    decision = reconcile(body, deleting=True)[0]
    if decision.phase is None or not decision.phase.terminal:
        raise kopf.TemporaryError("waiting for the workers to stop", delay=1)
