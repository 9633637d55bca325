"""The MigrationJob contract: names, typed spec, status shapes and the worker's environment, in one place.

Everything else imports this module; it imports nothing of ours. The API server validates first (the CRD's schema and
CEL rules in crds/); the parsing here turns an already-validated spec into typed values and catches what a schema
cannot (e.g. a quantity suffix it does not know).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "datamover.io"
VERSION = "v1alpha1"
PLURAL = "migrationjobs"
KIND = "MigrationJob"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = "datamover.io/cleanup"

MIN_PART_SIZE = 5 * 1024 * 1024

# Labels the operator puts on everything it creates for a MigrationJob, so it can find them again after a restart.
LABEL_JOB = "datamover.io/migrationjob"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "datamover-operator"

# The worker pod's environment: the operator writes it into the pod template, the worker reads it.
ENV_NAME = "DATAMOVER_MIGRATIONJOB"
ENV_NAMESPACE = "DATAMOVER_NAMESPACE"
ENV_POD = "DATAMOVER_POD"
ENV_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller on Indexed Job pods


def credential_env(side: str, key: str) -> str:
    """Name of the environment variable carrying one credential key for 'source' or 'destination'."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
    return f"DATAMOVER_{side.upper()}_{snake}"


# A worker exits with this code when retrying cannot help (bad credentials, missing bucket): the Job's
# podFailurePolicy then fails the Job at once instead of burning its retries.
EXIT_PERMANENT_FAILURE = 3

SECRET_KEYS_REQUIRED = ("accessKeyId", "secretAccessKey")
SECRET_KEYS_OPTIONAL = ("sessionToken",)


# A running worker reports at least this often, progress or not; one silent for the timeout is taken for frozen (or
# cut off from the API server) and restarted by the operator.
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_TIMEOUT_SECONDS = 60.0


class Phase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    ABORTING = "aborting"
    ABORTED = "aborted"
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.ABORTED, Phase.CANCELLED, Phase.SUCCEEDED, Phase.FAILED})


class WorkerState(enum.StrEnum):
    """What a worker reports in status.workers[i].state; 'succeeded', 'aborted' and 'failed' are final."""

    STARTING = "starting"
    RUNNING = "running"
    ABORTING = "aborting"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (WorkerState.SUCCEEDED, WorkerState.ABORTED, WorkerState.FAILED)


class SpecError(ValueError):
    """The spec cannot be used as written; the message names the field."""


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_SUFFIX = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}


def parse_quantity(value: int | str, field_name: str) -> int:
    """Bytes in a Kubernetes quantity such as 16Mi or 64M (the subset that makes sense for sizes)."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(value.strip())
    if not match:
        raise SpecError(f"{field_name}: {value!r} is not a size quantity such as 16Mi")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIX[suffix])


@dataclass(frozen=True)
class Location:
    """One side of a migration: spec.source or spec.destination."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    secret_name: str | None = None
    insecure_skip_tls_verify: bool = False

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any], side: str) -> Location:
        bucket = raw.get("bucket")
        if not bucket:
            raise SpecError(f"spec.{side}.bucket is required")
        secret = raw.get("credentialsSecretRef") or {}
        return cls(
            bucket=str(bucket),
            prefix=str(raw.get("prefix") or cls.prefix),
            endpoint=raw.get("endpoint") or None,
            region=raw.get("region") or None,
            addressing_style=str(raw.get("addressingStyle") or cls.addressing_style),
            secret_name=secret.get("name") or None,
            insecure_skip_tls_verify=bool(raw.get("insecureSkipTLSVerify", cls.insecure_skip_tls_verify)),
        )

    def describe(self) -> str:
        """Human name of the place, for messages: endpoint and bucket, never credentials."""
        return f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3'}"


@dataclass(frozen=True)
class MigrationSpec:
    """spec of a MigrationJob, typed, with the schema's defaults applied.

    The CRD's schema is where defaults are decided (the API server applies them); the field defaults here repeat
    them for objects that reach the code without passing the API server, and tests/unit/test_defaults.py fails when
    the two drift.
    """

    source: Location
    destination: Location
    remain_source: bool = True
    abort: bool = False
    parallelism: int = 1
    concurrency: int = 4
    part_size: int = 16 * 1024 * 1024
    abort_grace_period_seconds: int = 60
    # No answer from an endpoint for this long while requests wait fails the job, naming the endpoint.
    stall_timeout_seconds: int = 60

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> MigrationSpec:
        if not isinstance(raw.get("source"), Mapping):
            raise SpecError("spec.source is required")
        if not isinstance(raw.get("destination"), Mapping):
            raise SpecError("spec.destination is required")
        part_size = parse_quantity(raw.get("partSize", cls.part_size), "spec.partSize")
        if part_size < MIN_PART_SIZE:
            raise SpecError(f"spec.partSize: {part_size} bytes is below the 5Mi minimum of S3 multipart uploads")
        parallelism = int(raw.get("parallelism", cls.parallelism))
        if not 1 <= parallelism <= 64:
            raise SpecError(f"spec.parallelism: {parallelism} is outside 1..64")
        return cls(
            source=Location.from_spec(raw["source"], "source"),
            destination=Location.from_spec(raw["destination"], "destination"),
            remain_source=bool(raw.get("remainSource", cls.remain_source)),
            abort=bool(raw.get("abort", cls.abort)),
            parallelism=parallelism,
            concurrency=max(1, int(raw.get("concurrency", cls.concurrency))),
            part_size=part_size,
            abort_grace_period_seconds=max(0, int(raw.get("abortGracePeriodSeconds", cls.abort_grace_period_seconds))),
            stall_timeout_seconds=max(1, int(raw.get("stallTimeoutSeconds", cls.stall_timeout_seconds))),
        )


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload a worker has open on the destination bucket."""

    key: str
    upload_id: str

    def to_status(self) -> dict[str, str]:
        return {"key": self.key, "uploadId": self.upload_id}

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> UploadRecord:
        return cls(key=str(raw["key"]), upload_id=str(raw["uploadId"]))


@dataclass(frozen=True)
class IntentRecord:
    """A destination key a worker may have an upload on since `since` (recorded before CreateMultipartUpload).

    Whoever cleans up lists the key's uploads and aborts those initiated since then (minus a clock-skew allowance),
    which also finds an upload whose ID never reached status (a crash, or a lost create response).
    """

    key: str
    since: dt.datetime  # aware UTC; recorded to the second, rounded down (so the record never claims too late)

    def to_status(self) -> dict[str, str]:
        return {"key": self.key, "since": self.since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> IntentRecord:
        return cls(key=str(raw["key"]), since=parse_time(str(raw["since"])))


# How many keys status.workers[i].retainedKeys lists (objectsRetained always counts them all).
MAX_STATUS_KEYS = 100


@dataclass(frozen=True)
class WorkerReport:
    """status.workers[i]: what worker i last said about itself."""

    state: WorkerState
    pod: str = ""
    heartbeat: str = ""
    message: str = ""
    objects_total: int = 0
    objects_migrated: int = 0
    objects_skipped: int = 0
    objects_failed: int = 0
    bytes_total: int = 0
    bytes_migrated: int = 0
    bytes_skipped: int = 0
    listing_done: bool = False
    destination_written: bool = False  # a write request (PUT, create, copy) has started: the job is past pending
    reason: str = ""  # with state failed: a condition reason such as CredentialsRejected or BucketNotFound
    open_uploads: tuple[UploadRecord, ...] = field(default_factory=tuple)
    upload_intents: tuple[IntentRecord, ...] = field(default_factory=tuple)
    objects_retained: int = 0  # moved objects in both places: verified copy, but the source delete failed
    retained_keys: tuple[str, ...] = field(default_factory=tuple)  # the first MAX_STATUS_KEYS of them

    def to_status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "pod": self.pod,
            "heartbeat": self.heartbeat,
            "message": self.message,
            "objectsTotal": self.objects_total,
            "objectsMigrated": self.objects_migrated,
            "objectsSkipped": self.objects_skipped,
            "objectsFailed": self.objects_failed,
            "bytesTotal": self.bytes_total,
            "bytesMigrated": self.bytes_migrated,
            "bytesSkipped": self.bytes_skipped,
            "listingDone": self.listing_done,
            "destinationWritten": self.destination_written,
            "reason": self.reason,
            "openUploads": [u.to_status() for u in self.open_uploads],
            "uploadIntents": [i.to_status() for i in self.upload_intents],
            "objectsRetained": self.objects_retained,
            "retainedKeys": list(self.retained_keys[:MAX_STATUS_KEYS]),
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> WorkerReport:
        try:
            state = WorkerState(raw.get("state", WorkerState.STARTING))
        except ValueError:
            state = WorkerState.STARTING
        return cls(
            state=state,
            pod=str(raw.get("pod", "")),
            heartbeat=str(raw.get("heartbeat", "")),
            message=str(raw.get("message", "")),
            objects_total=int(raw.get("objectsTotal", 0)),
            objects_migrated=int(raw.get("objectsMigrated", 0)),
            objects_skipped=int(raw.get("objectsSkipped", 0)),
            objects_failed=int(raw.get("objectsFailed", 0)),
            bytes_total=int(raw.get("bytesTotal", 0)),
            bytes_migrated=int(raw.get("bytesMigrated", 0)),
            bytes_skipped=int(raw.get("bytesSkipped", 0)),
            listing_done=bool(raw.get("listingDone", False)),
            destination_written=bool(raw.get("destinationWritten", False)),
            reason=str(raw.get("reason", "")),
            open_uploads=tuple(UploadRecord.from_status(u) for u in raw.get("openUploads") or ()),
            upload_intents=tuple(IntentRecord.from_status(i) for i in raw.get("uploadIntents") or ()),
            objects_retained=int(raw.get("objectsRetained", 0)),
            retained_keys=tuple(str(k) for k in raw.get("retainedKeys") or ()),
        )


def worker_reports(status: Mapping[str, Any]) -> dict[int, WorkerReport]:
    """status.workers keyed by worker index."""
    raw = status.get("workers") or {}
    return {int(index): WorkerReport.from_status(entry) for index, entry in raw.items() if entry}


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_status(reports: Mapping[int, WorkerReport]) -> dict[str, Any]:
    """status.progress: the sum of the workers' reports, plus the strings the printer columns show."""
    total = sum(r.objects_total for r in reports.values())
    migrated = sum(r.objects_migrated for r in reports.values())
    skipped = sum(r.objects_skipped for r in reports.values())
    failed = sum(r.objects_failed for r in reports.values())
    bytes_total = sum(r.bytes_total for r in reports.values())
    bytes_migrated = sum(r.bytes_migrated for r in reports.values())
    bytes_skipped = sum(r.bytes_skipped for r in reports.values())
    done = migrated + skipped
    # Bytes, not objects: one large object left to copy is most of the work however many small ones are done.
    # Skipped (already identical) objects count as done bytes, so a resumed job reaches 100%. A listing of empty
    # objects only has no bytes to count: then objects are the measure.
    if bytes_total:
        percent = 100 * (bytes_migrated + bytes_skipped) // bytes_total
    else:
        percent = 100 * done // total if total else 0
    return {
        "objectsTotal": total,
        "objectsMigrated": migrated,
        "objectsSkipped": skipped,
        "objectsFailed": failed,
        "bytesTotal": bytes_total,
        "bytesMigrated": bytes_migrated,
        "bytesSkipped": bytes_skipped,
        "percent": f"{percent}%",
        "objects": f"{done}/{total}",
        "bytes": f"{human_bytes(bytes_migrated + bytes_skipped)}/{human_bytes(bytes_total)}",
    }
