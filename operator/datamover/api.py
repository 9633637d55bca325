"""The MigrationJob contract: names, typed spec, status shapes and the worker's environment, in one place.

The operator and the worker import this module. It sits above the engine: a worker's report *is* the engine's
progress snapshot (one counters type, one WorkerState) plus who said it and what it left open, so it imports the
engine's vocabulary and nothing else of ours. The API server validates first (the CRD's schema and
CEL rules in crds/); the parsing here turns an already-validated spec into typed values and catches what a schema
cannot (e.g. a quantity suffix it does not know).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from datamover.engine import Amount, ObjectFilter, OpenUpload, Plan, Progress, UploadIntent, check_pattern
from datamover.engine.fsm import WorkerState
from datamover.engine.keys import KeysFormat
from datamover.engine.report import ACTIONS, FAILED

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
# The worker container's memory limit in bytes (downward API; the node's allocatable memory when no limit is set).
ENV_MEMORY_LIMIT = "DATAMOVER_MEMORY_LIMIT"
ENV_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller on Indexed Job pods


def credential_env(side: str, key: str) -> str:
    """Name of the environment variable carrying one credential key for 'source' or 'destination'."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
    return f"DATAMOVER_{side.upper()}_{snake}"


# A worker exits with this code when retrying cannot help (bad credentials, missing bucket): the Job's
# podFailurePolicy then fails the Job at once instead of burning its retries.
EXIT_PERMANENT_FAILURE = 3



class StoreType(enum.StrEnum):
    """spec.<side>.type: which store family a location is in (the union's discriminator; absent means s3)."""

    S3 = "s3"
    AZURE_BLOB = "azureBlob"
    GCS = "gcs"


@dataclass(frozen=True)
class SecretKeys:
    """The keys a location's credentials Secret holds: all of `required`, at least one of `one_of` if any, and
    with each `one_of` key it holds, that key's `companions` (listed in `optional` too, so workers get them)."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    companions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.required + self.one_of + self.optional

    def missing_companion(self, data: Mapping[str, str]) -> tuple[str, str] | None:
        """(a key the Secret lacks, the key it goes with), for the first such pair; None when nothing is lacking."""
        for key, needed in self.companions:
            if data.get(key):
                for companion in needed:
                    if not data.get(companion):
                        return companion, key
        return None


SECRET_KEYS: dict[StoreType, SecretKeys] = {
    StoreType.S3: SecretKeys(required=("accessKeyId", "secretAccessKey"), optional=("sessionToken",)),
    # A Shared Key, a (container or account) SAS token, or an Entra ID service principal (its client secret with its
    # tenant and client IDs, and an authority host for sovereign clouds).
    StoreType.AZURE_BLOB: SecretKeys(one_of=("accountKey", "sasToken", "clientSecret"),
                                     optional=("tenantId", "clientId", "authorityHost"),
                                     companions=(("clientSecret", ("tenantId", "clientId")),)),
    # A service account's JSON key file, whole.
    StoreType.GCS: SecretKeys(required=("serviceAccountJson",)),
}


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
    SUSPENDED = "suspended"  # spec.suspend: workers stopped (or stopping), nothing lost; resumes when it is false

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.ABORTED, Phase.CANCELLED, Phase.SUCCEEDED, Phase.FAILED})


class Mode(enum.StrEnum):
    """spec.mode: run migrates; plan lists and compares both sides, writes nothing, and reports in status.plan what
    a run would do."""

    RUN = "run"
    PLAN = "plan"


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


# spec.destination.serverSideEncryption.type -> the S3 x-amz-server-side-encryption value it asks for.
SERVER_SIDE_ENCRYPTION = {"SSE-S3": "AES256", "SSE-KMS": "aws:kms"}


@dataclass(frozen=True)
class Location:
    """One side of a migration: spec.source or spec.destination.

    A discriminated union on `type`: the S3 fields sit at the top level (as they did before Azure and GCS came, so
    every existing spec keeps its meaning), the other families' own fields in a member named after their type.
    `bucket` is the bucket, or for Azure the container; `endpoint` the service URL, empty for the vendor's own.
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    secret_name: str | None = None
    insecure_skip_tls_verify: bool = False
    type: StoreType = StoreType.S3
    account_name: str | None = None  # azureBlob.accountName
    project: str | None = None  # gcs.project
    # Destination only (S3): the class every copy is written in (None keeps each source object's own class), and
    # the server-side encryption every copy is written with (SSE-S3 or SSE-KMS, with kms_key_id or the store's
    # default key; None asks for none, so the bucket's default encryption applies).
    storage_class: str | None = None
    server_side_encryption: str | None = None
    kms_key_id: str | None = None

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any], side: str) -> Location:
        bucket = raw.get("bucket")
        if not bucket:
            raise SpecError(f"spec.{side}.bucket is required")
        try:
            store_type = StoreType(raw.get("type") or StoreType.S3)
        except ValueError as error:
            raise SpecError(f"spec.{side}.type must be one of {', '.join(t.value for t in StoreType)}") from error
        azure = raw.get("azureBlob") or {}
        gcs = raw.get("gcs") or {}
        if store_type is StoreType.AZURE_BLOB and not azure.get("accountName"):
            raise SpecError(f"spec.{side}.azureBlob.accountName is required when type is azureBlob")
        secret = raw.get("credentialsSecretRef") or {}
        encryption = raw.get("serverSideEncryption") or {}
        if side == "source" and (raw.get("storageClass") or encryption):
            raise SpecError("spec.source: storageClass and serverSideEncryption are destination fields")
        if encryption and encryption.get("type") not in SERVER_SIDE_ENCRYPTION:
            raise SpecError(f"spec.{side}.serverSideEncryption.type must be one of "
                            f"{', '.join(SERVER_SIDE_ENCRYPTION)}")
        if encryption.get("kmsKeyId") and encryption.get("type") != "SSE-KMS":
            raise SpecError(f"spec.{side}.serverSideEncryption.kmsKeyId goes with type SSE-KMS only")
        if (raw.get("storageClass") or encryption) and store_type is not StoreType.S3:
            raise SpecError(f"spec.{side}: storageClass and serverSideEncryption are S3 fields (type s3) only")
        return cls(
            bucket=str(bucket),
            prefix=str(raw.get("prefix") or cls.prefix),
            endpoint=raw.get("endpoint") or None,
            region=raw.get("region") or None,
            addressing_style=str(raw.get("addressingStyle") or cls.addressing_style),
            secret_name=secret.get("name") or None,
            insecure_skip_tls_verify=bool(raw.get("insecureSkipTLSVerify", cls.insecure_skip_tls_verify)),
            type=store_type,
            account_name=azure.get("accountName") or None,
            project=gcs.get("project") or None,
            storage_class=raw.get("storageClass") or None,
            server_side_encryption=encryption.get("type") or None,
            kms_key_id=encryption.get("kmsKeyId") or None,
        )

    @property
    def secret_keys(self) -> SecretKeys:
        return SECRET_KEYS[self.type]

    def describe(self) -> str:
        """Human name of the place, for messages: endpoint and bucket, never credentials."""
        if self.type is StoreType.AZURE_BLOB:
            return f"container {self.bucket!r} of Azure storage account {self.account_name!r}" + (
                f" at {self.endpoint}" if self.endpoint else "")
        if self.type is StoreType.GCS:
            return f"bucket {self.bucket!r} at {self.endpoint or 'Google Cloud Storage'}"
        return f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3'}"


_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:w|d|h|m|s))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(w|d|h|m|s)")
_DURATION_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_bound(value: str, field_name: str) -> dt.datetime | dt.timedelta:
    """An RFC 3339 time, or an age such as 720h or 1d12h (rclone's --max-age/--min-age units up to weeks)."""
    text = value.strip()
    if _DURATION.match(text):
        return dt.timedelta(seconds=sum(float(n) * _DURATION_UNIT[u] for n, u in _DURATION_PART.findall(text)))
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"{field_name}: {value!r} is neither an RFC 3339 time nor an age such as 720h") from None
    if parsed.tzinfo is None:
        raise SpecError(f"{field_name}: {value!r} has no time zone (add Z for UTC)")
    return parsed.astimezone(dt.UTC)


@dataclass(frozen=True)
class ThrottleSpec:
    """spec.throttle: limits for the whole job, split evenly across its workers; the one part of spec besides abort
    that may change while the job runs (the workers follow it within seconds)."""

    bytes_per_second: int | None = None  # bytes the workers download per second, together
    requests_per_second: int | None = None  # requests the workers send per second, together, to both stores

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> ThrottleSpec:
        rate = raw.get("bytesPerSecond")
        bytes_per_second = parse_quantity(rate, "spec.throttle.bytesPerSecond") if rate is not None else None
        requests = raw.get("requestsPerSecond")
        requests_per_second = int(requests) if requests is not None else None
        if bytes_per_second is not None and bytes_per_second < MIN_THROTTLE_BYTES:
            raise SpecError(f"spec.throttle.bytesPerSecond: {bytes_per_second} is below {MIN_THROTTLE_BYTES} (1Ki)")
        if requests_per_second is not None and requests_per_second < 1:
            raise SpecError(f"spec.throttle.requestsPerSecond: {requests_per_second} is below 1")
        return cls(bytes_per_second, requests_per_second)

    def per_worker(self, workers: int) -> tuple[float | None, float | None]:
        """One worker's share: (bytes per second, requests per second), None where there is no limit."""
        return (self.bytes_per_second / workers if self.bytes_per_second else None,
                self.requests_per_second / workers if self.requests_per_second else None)


MIN_THROTTLE_BYTES = 1024


@dataclass(frozen=True)
class NotifySpec:
    """spec.notify: where to announce the job's end. The webhook URL lives in a Secret (it often carries a token)."""

    webhook_secret: str | None = None  # spec.notify.webhook.urlSecretRef.name
    webhook_key: str = "url"  # spec.notify.webhook.urlSecretRef.key

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> NotifySpec:
        ref = (raw.get("webhook") or {}).get("urlSecretRef") or {}
        if not ref:
            return cls()
        if not ref.get("name"):
            raise SpecError("spec.notify.webhook.urlSecretRef.name is required")
        return cls(str(ref["name"]), str(ref.get("key") or cls.webhook_key))


@dataclass(frozen=True)
class FilterSpec:
    """spec.filter: which objects of the source move. An age (720h) is counted back from the MigrationJob's
    creation, so every worker and every retry of a job selects the same objects."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    modified_after: dt.datetime | dt.timedelta | None = None
    modified_before: dt.datetime | dt.timedelta | None = None

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> FilterSpec:
        for name in ("include", "exclude"):
            for pattern in raw.get(name) or ():
                problem = check_pattern(str(pattern))
                if problem:
                    raise SpecError(f"spec.filter.{name}: {problem}")
        sizes = {name: parse_quantity(raw[name], f"spec.filter.{name}") if raw.get(name) is not None else None
                 for name in ("minSize", "maxSize")}
        if sizes["minSize"] is not None and sizes["maxSize"] is not None and sizes["minSize"] > sizes["maxSize"]:
            raise SpecError("spec.filter: minSize is larger than maxSize, so no object could be selected")
        times = {name: parse_time_bound(str(raw[name]), f"spec.filter.{name}") if raw.get(name) else None
                 for name in ("modifiedAfter", "modifiedBefore")}
        return cls(include=tuple(str(p) for p in raw.get("include") or ()),
                   exclude=tuple(str(p) for p in raw.get("exclude") or ()),
                   min_size=sizes["minSize"], max_size=sizes["maxSize"],
                   modified_after=times["modifiedAfter"], modified_before=times["modifiedBefore"])

    def anchored(self, created: dt.datetime) -> ObjectFilter:
        """The engine's filter, with ages turned into times counted back from `created`."""
        def at(bound: dt.datetime | dt.timedelta | None) -> dt.datetime | None:
            return created - bound if isinstance(bound, dt.timedelta) else bound
        return ObjectFilter(self.include, self.exclude, self.min_size, self.max_size,
                            at(self.modified_after), at(self.modified_before))


# Where reports go by default: under this prefix of the destination's bucket, then <namespace>/<job>/<job uid>/.
REPORT_PREFIX = "datamover-reports/"


@dataclass(frozen=True)
class ReportSpec:
    """spec.report: a per-object report (JSON Lines, one line per object) written by every worker.

    Off unless spec.report is set; `location` None means the destination's store and bucket under REPORT_PREFIX."""

    enabled: bool = False
    location: Location | None = None

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any] | None) -> ReportSpec:
        if raw is None:
            return cls()
        location = raw.get("location")
        return cls(enabled=bool(raw.get("enabled", True)),
                   location=Location.from_spec(location, "report.location") if location else None)

    @property
    def credentials_side(self) -> str:
        """Whose credentials write the report: its own location's, or the destination's."""
        return "report" if self.location is not None else "destination"


@dataclass(frozen=True)
class WorkerIdentitySpec:
    """spec.workerIdentity: what gives the worker pods a cloud identity of their own (EKS IRSA, GKE or Azure Workload
    Identity): annotations on the job's ServiceAccount and labels on its pods."""

    service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> WorkerIdentitySpec:
        labels = {str(k): str(v) for k, v in (raw.get("podLabels") or {}).items()}
        owned = [k for k in labels if k.startswith("datamover.io/") or k == LABEL_MANAGED_BY]
        if owned:
            raise SpecError(f"spec.workerIdentity.podLabels: {', '.join(owned)} are the operator's own labels")
        annotations = {str(k): str(v) for k, v in (raw.get("serviceAccountAnnotations") or {}).items()}
        return cls(annotations, labels)


@dataclass(frozen=True)
class KeysFromSpec:
    """spec.keysFrom: move these keys instead of listing the source (e.g. retry only what an earlier job failed).

    With format report, `location` is where that report is (its bucket and prefix, as its status.report says);
    otherwise `key` is the manifest object's key in `location`'s bucket."""

    location: Location
    format: KeysFormat = KeysFormat.REPORT
    key: str = ""
    actions: tuple[str, ...] = (FAILED,)

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> KeysFromSpec:
        if not isinstance(raw.get("location"), Mapping):
            raise SpecError("spec.keysFrom.location is required")
        try:
            keys_format = KeysFormat(raw.get("format") or KeysFormat.REPORT)
        except ValueError as error:
            raise SpecError(f"spec.keysFrom.format must be one of {', '.join(KeysFormat)}") from error
        key = str(raw.get("key") or "")
        if keys_format is not KeysFormat.REPORT and not key:
            raise SpecError(f"spec.keysFrom.key is required with format {keys_format.value}")
        actions = tuple(str(a) for a in raw.get("actions") or (FAILED,))
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            raise SpecError(f"spec.keysFrom.actions: {', '.join(unknown)} is not one of {', '.join(ACTIONS)}")
        return cls(Location.from_spec(raw["location"], "keysFrom.location"), keys_format, key, actions)


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
    concurrency: int = 32
    # Parts in flight per worker, shared by its objects (one large object may use them all).
    part_concurrency: int = 8
    part_size: int = 16 * 1024 * 1024
    abort_grace_period_seconds: int = 60
    # No answer from an endpoint for this long while requests wait fails the job, naming the endpoint.
    stall_timeout_seconds: int = 60
    filter: FilterSpec = field(default_factory=FilterSpec)
    throttle: ThrottleSpec = field(default_factory=ThrottleSpec)
    suspend: bool = False
    notify: NotifySpec = field(default_factory=NotifySpec)
    mode: Mode = Mode.RUN
    report: ReportSpec = field(default_factory=ReportSpec)
    keys_from: KeysFromSpec | None = None
    worker_identity: WorkerIdentitySpec = field(default_factory=WorkerIdentitySpec)

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
        part_concurrency = int(raw.get("partConcurrency", cls.part_concurrency))
        if not 1 <= part_concurrency <= 256:
            raise SpecError(f"spec.partConcurrency: {part_concurrency} is outside 1..256")
        try:
            mode = Mode(raw.get("mode") or cls.mode)
        except ValueError:
            raise SpecError(f"spec.mode: {raw.get('mode')!r} is not one of {', '.join(Mode)}") from None
        return cls(
            source=Location.from_spec(raw["source"], "source"),
            destination=Location.from_spec(raw["destination"], "destination"),
            remain_source=bool(raw.get("remainSource", cls.remain_source)),
            abort=bool(raw.get("abort", cls.abort)),
            parallelism=parallelism,
            concurrency=max(1, int(raw.get("concurrency", cls.concurrency))),
            part_concurrency=part_concurrency,
            part_size=part_size,
            abort_grace_period_seconds=max(0, int(raw.get("abortGracePeriodSeconds", cls.abort_grace_period_seconds))),
            stall_timeout_seconds=max(1, int(raw.get("stallTimeoutSeconds", cls.stall_timeout_seconds))),
            filter=FilterSpec.from_spec(raw.get("filter") or {}),
            throttle=ThrottleSpec.from_spec(raw.get("throttle") or {}),
            suspend=bool(raw.get("suspend", cls.suspend)),
            notify=NotifySpec.from_spec(raw.get("notify") or {}),
            mode=mode,
            report=ReportSpec.from_spec(raw.get("report")),
            keys_from=KeysFromSpec.from_spec(raw["keysFrom"]) if raw.get("keysFrom") else None,
            worker_identity=WorkerIdentitySpec.from_spec(raw.get("workerIdentity") or {}),
        )

    def credentialed_locations(self) -> tuple[tuple[str, str, Location], ...]:
        """Every location the workers open with credentials of its own, as (credentials side, spec field, location):
        the side names the workers' environment variables (credential_env), the field a person's message."""
        found = [("source", "source", self.source), ("destination", "destination", self.destination)]
        if self.report.enabled and self.report.location is not None:
            found.append(("report", "report.location", self.report.location))
        if self.keys_from is not None:
            found.append(("keysFrom", "keysFrom.location", self.keys_from.location))
        return tuple(found)

    def report_location(self, namespace: str, name: str, uid: str) -> Location | None:
        """Where this job's report goes (the prefix holds only this job's report), or None with no report.

        The job's uid is part of the prefix, so a job deleted and created again under the same name starts a new
        report instead of mixing with the old one."""
        if not self.report.enabled:
            return None
        base = self.report.location or replace(self.destination, prefix=REPORT_PREFIX)
        return replace(base, prefix=f"{base.prefix}{namespace}/{name}/{uid}/")


def report_status(location: Location) -> dict[str, str]:
    """status.report: where the report is (never credentials; the spec names their Secret)."""
    return {"type": location.type.value, "bucket": location.bucket, "prefix": location.prefix,
            **({"endpoint": location.endpoint} if location.endpoint else {})}


def open_upload_status(upload: OpenUpload) -> dict[str, str]:
    """An open upload as status.workers[i].openUploads records it (the bucket is the job's destination bucket)."""
    return {"key": upload.key, "uploadId": upload.upload_id}


def upload_intent_status(intent: UploadIntent) -> dict[str, str]:
    """An upload intent as status.workers[i].uploadIntents records it: to the second, rounded down (so the record
    never claims a later start than the truth)."""
    return {"key": intent.key, "since": intent.since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


# How many keys status.workers[i].retainedKeys lists (objectsRetained always counts them all).
MAX_STATUS_KEYS = 100

# The engine's progress counters that status.workers[i] (and, summed, status.progress) carry, by their engine name;
# the status key is its camelCase. The rest of Progress (objects in flight, bytes of parts in flight) is the worker's
# own business.
REPORTED_COUNTERS = ("objects_total", "objects_migrated", "objects_skipped", "objects_failed", "objects_retained",
                     "objects_excluded", "bytes_total", "bytes_migrated", "bytes_skipped", "objects_planned",
                     "bytes_planned")
REPORTED_FLAGS = ("listing_done", "destination_written")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True)
class WorkerReport(Progress):
    """status.workers[i]: worker i's last progress snapshot, plus who said it, when, and what it left to clean up."""

    pod: str = ""
    heartbeat: str = ""
    message: str = ""
    reason: str = ""  # with state failed: a condition reason such as CredentialsRejected or BucketNotFound
    # Smoothed rates of done work (migrated or skipped, and parts of large objects in flight), and when it last grew.
    bytes_per_second: int = 0
    objects_per_second: float = 0.0
    last_progress: str = ""
    open_uploads: tuple[OpenUpload, ...] = field(default_factory=tuple)
    upload_intents: tuple[UploadIntent, ...] = field(default_factory=tuple)
    plan: Plan | None = None  # plan mode: in the final report only

    @classmethod
    def of(cls, progress: Progress, **report: Any) -> WorkerReport:
        return cls(**{**{f.name: getattr(progress, f.name) for f in fields(Progress)}, **report})

    def to_status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "pod": self.pod,
            "heartbeat": self.heartbeat,
            "message": self.message,
            "reason": self.reason,
            **{_camel(name): getattr(self, name) for name in REPORTED_COUNTERS + REPORTED_FLAGS},
            "bytesPerSecond": self.bytes_per_second,
            "objectsPerSecond": self.objects_per_second,
            **({"lastProgressTime": self.last_progress} if self.last_progress else {}),
            "openUploads": [open_upload_status(u) for u in self.open_uploads],
            "uploadIntents": [upload_intent_status(i) for i in self.upload_intents],
            "retainedKeys": list(self.retained_keys[:MAX_STATUS_KEYS]),
            **({"plan": plan_status(self.plan)} if self.plan is not None else {}),
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any], bucket: str) -> WorkerReport:
        """Read one status.workers entry; `bucket` is the job's destination bucket, where its uploads are."""
        try:
            state = WorkerState(raw.get("state", WorkerState.PENDING))
        except ValueError:
            state = WorkerState.PENDING
        counters: dict[str, Any] = {name: int(raw.get(_camel(name), 0)) for name in REPORTED_COUNTERS}
        flags: dict[str, Any] = {name: bool(raw.get(_camel(name), False)) for name in REPORTED_FLAGS}
        return cls(
            state=state,
            pod=str(raw.get("pod", "")),
            heartbeat=str(raw.get("heartbeat", "")),
            message=str(raw.get("message", "")),
            reason=str(raw.get("reason", "")),
            **counters,
            **flags,
            bytes_per_second=int(raw.get("bytesPerSecond", 0)),
            objects_per_second=float(raw.get("objectsPerSecond", 0.0)),
            last_progress=str(raw.get("lastProgressTime", "")),
            open_uploads=tuple(OpenUpload(bucket, str(u["key"]), str(u["uploadId"]))
                               for u in raw.get("openUploads") or ()),
            upload_intents=tuple(UploadIntent(str(i["key"]), parse_time(str(i["since"])))
                                 for i in raw.get("uploadIntents") or ()),
            retained_keys=tuple(str(k) for k in raw.get("retainedKeys") or ()),
            plan=plan_from_status(raw["plan"]) if raw.get("plan") else None,
        )


# The plan's copy mechanisms (engine.plan.MECHANISMS) as status names them.
_MECHANISM_STATUS = {"single": "single", "multipart": "multipart", "server_copy": "serverSideCopy",
                     "server_part_copy": "serverSidePartCopy"}
_PLAN_AMOUNTS = ("copy", "identical", "delete_from_source", "excluded")


def _amount_status(amount: Amount) -> dict[str, int]:
    return {"objects": amount.objects, "bytes": amount.bytes}


def _amount(raw: Mapping[str, Any] | None) -> Amount:
    return Amount(int((raw or {}).get("objects", 0)), int((raw or {}).get("bytes", 0)))


def plan_status(plan: Plan) -> dict[str, Any]:
    """A plan as status.plan (and status.workers[i].plan) records it."""
    return {
        **{_camel(name): _amount_status(getattr(plan, name)) for name in _PLAN_AMOUNTS},
        "byMechanism": {_MECHANISM_STATUS[name]: _amount_status(amount)
                        for name, amount in sorted(plan.by_mechanism.items())},
        "runRequests": {side: dict(counts) for side, counts in plan.run_requests.items()},
        "planRequests": {side: dict(counts) for side, counts in plan.plan_requests.items()},
    }


def plan_from_status(raw: Mapping[str, Any]) -> Plan:
    mechanisms = {status: name for name, status in _MECHANISM_STATUS.items()}

    def requests(sides: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
        return {str(side): {str(kind): int(n) for kind, n in counts.items()} for side, counts in (sides or {}).items()}

    return Plan(**{name: _amount(raw.get(_camel(name))) for name in _PLAN_AMOUNTS},
                by_mechanism={mechanisms[key]: _amount(value) for key, value in (raw.get("byMechanism") or {}).items()
                              if key in mechanisms},
                run_requests=requests(raw.get("runRequests")), plan_requests=requests(raw.get("planRequests")))


def _add(a: Amount, b: Amount) -> Amount:
    return Amount(a.objects + b.objects, a.bytes + b.bytes)


def _add_requests(a: Mapping[str, Mapping[str, int]], b: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {side: {kind: a.get(side, {}).get(kind, 0) + b.get(side, {}).get(kind, 0)
                   for kind in sorted({*a.get(side, {}), *b.get(side, {})})}
            for side in sorted({*a, *b})}


def job_plan(reports: Mapping[int, WorkerReport]) -> Plan | None:
    """The workers' plans summed (the job's plan), or None while no worker has reported one."""
    plans = [report.plan for _, report in sorted(reports.items()) if report.plan is not None]
    if not plans:
        return None
    total = Plan()
    for plan in plans:
        total = Plan(**{name: _add(getattr(total, name), getattr(plan, name)) for name in _PLAN_AMOUNTS},
                     by_mechanism={name: _add(total.by_mechanism.get(name, Amount()),
                                              plan.by_mechanism.get(name, Amount()))
                                   for name in sorted({*total.by_mechanism, *plan.by_mechanism})},
                     run_requests=_add_requests(total.run_requests, plan.run_requests),
                     plan_requests=_add_requests(total.plan_requests, plan.plan_requests))
    return total


def plan_summary(plan: Plan, move: bool) -> str:
    """One sentence saying what a run would do (the Planned condition's and Event's message)."""
    requests = sum(n for counts in plan.run_requests.values() for n in counts.values())
    parts = [f"a run would copy {plan.copy.objects} object(s) ({human_bytes(plan.copy.bytes)})",
             f"skip {plan.identical.objects} identical ({human_bytes(plan.identical.bytes)})"]
    if move:
        parts.append(f"delete {plan.delete_from_source.objects} from the source "
                     f"({human_bytes(plan.delete_from_source.bytes)})")
    parts.append(f"leave {plan.excluded.objects} excluded by spec.filter")
    return ", ".join(parts) + f", in about {requests} request(s); nothing was written (status.plan)"


def worker_reports(body: Mapping[str, Any]) -> dict[int, WorkerReport]:
    """A MigrationJob's status.workers, keyed by worker index."""
    bucket = str(((body.get("spec") or {}).get("destination") or {}).get("bucket", ""))
    raw = (body.get("status") or {}).get("workers") or {}
    return {int(index): WorkerReport.from_status(entry, bucket) for index, entry in raw.items() if entry}


@dataclass(frozen=True)
class Condition:
    """One of status.conditions, as Kubernetes conventions shape them (kstatus, ArgoCD and `kubectl wait` read
    these)."""

    type: str
    status: bool
    reason: str
    message: str
    observed_generation: int = 0
    last_transition_time: str = ""  # changes only when status flips

    def to_status(self) -> dict[str, Any]:
        return {"type": self.type, "status": "True" if self.status else "False", "reason": self.reason,
                "message": self.message, "observedGeneration": self.observed_generation,
                "lastTransitionTime": self.last_transition_time}

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> Condition:
        return cls(type=str(raw.get("type", "")), status=raw.get("status") == "True", reason=str(raw.get("reason", "")),
                   message=str(raw.get("message", "")), observed_generation=int(raw.get("observedGeneration") or 0),
                   last_transition_time=str(raw.get("lastTransitionTime", "")))


@dataclass(frozen=True)
class MigrationStatus:
    """A MigrationJob's status, typed: what the operator writes (phase, reason, times, conditions, progress) and
    what each worker writes (its report). Written as merge patches; read by the operator, the workers and tests."""

    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    start_time: str = ""
    completion_time: str = ""
    abort_requested_time: str = ""
    conditions: tuple[Condition, ...] = ()
    progress: Mapping[str, Any] = field(default_factory=dict)  # as progress_status() rendered it
    plan: Mapping[str, Any] = field(default_factory=dict)  # plan mode: as plan_status() rendered the job's plan
    workers: Mapping[int, WorkerReport] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> MigrationStatus:
        """The status of a MigrationJob object (a watch event's body, a GET, a patch response)."""
        raw = body.get("status") or {}
        try:
            phase = Phase(raw["phase"]) if raw.get("phase") else None
        except ValueError:
            phase = None
        generation = raw.get("observedGeneration")
        return cls(
            phase=phase,
            reason=str(raw.get("reason", "")),
            message=str(raw.get("message", "")),
            observed_generation=int(generation) if generation is not None else None,
            start_time=str(raw.get("startTime", "")),
            completion_time=str(raw.get("completionTime", "")),
            abort_requested_time=str(raw.get("abortRequestedTime", "")),
            conditions=tuple(Condition.from_status(c) for c in raw.get("conditions") or ()),
            progress=dict(raw.get("progress") or {}),
            plan=dict(raw.get("plan") or {}),
            workers=worker_reports(body),
        )

    @property
    def final(self) -> bool:
        return self.phase is not None and self.phase.terminal

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


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
    """status.progress: the workers' counters summed, plus the strings the printer columns show."""
    sums = {name: sum(getattr(r, name) for r in reports.values()) for name in REPORTED_COUNTERS}
    # A plan's work is examining objects: in plan mode nothing is migrated or skipped, and planned objects are done.
    done = sums["objects_migrated"] + sums["objects_skipped"] + sums["objects_planned"]
    done_bytes = sums["bytes_migrated"] + sums["bytes_skipped"] + sums["bytes_planned"]
    # Bytes, not objects: one large object left to copy is most of the work however many small ones are done.
    # Skipped (already identical) objects count as done bytes, so a resumed job reaches 100%. A listing of empty
    # objects only has no bytes to count: then objects are the measure.
    if sums["bytes_total"]:
        percent = 100 * done_bytes // sums["bytes_total"]
    else:
        percent = 100 * done // sums["objects_total"] if sums["objects_total"] else 0
    running = [r for r in reports.values() if not r.state.final]
    bytes_rate = sum(r.bytes_per_second for r in running)
    objects_rate = round(sum(r.objects_per_second for r in running), 2)
    # An estimate needs the whole amount: only once every worker has listed its shard (until then totals grow).
    listed = bool(reports) and all(r.listing_done or r.state.final for r in reports.values())
    eta: float | None = None
    if listed and running:
        if sums["bytes_total"] and bytes_rate:
            eta = (sums["bytes_total"] - done_bytes) / bytes_rate
        elif not sums["bytes_total"] and objects_rate:
            eta = (sums["objects_total"] - done) / objects_rate
    last = max((r.last_progress for r in reports.values() if r.last_progress), default="")
    return {
        **{_camel(name): value for name, value in sums.items()},
        "percent": f"{percent}%",
        "objects": f"{done}/{sums['objects_total']}",
        "bytes": f"{human_bytes(done_bytes)}/{human_bytes(sums['bytes_total'])}",
        "bytesPerSecond": bytes_rate,
        "objectsPerSecond": objects_rate,
        "rate": f"{human_bytes(bytes_rate)}/s" if running else "",
        "eta": human_duration(eta) if eta is not None else "",
        **({"lastProgressTime": last} if last else {}),
    }


def human_duration(seconds: float) -> str:
    """A duration as kubectl prints ages: "45s", "3m20s", "2h5m", "3d4h"."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
