"""Plan mode (spec.mode: plan): what a run would copy, skip and delete, and the requests it would send, found by the
run's own listing and comparison while nothing is written to either store.

migrate() calls this module in plan mode. Both stores reach the plan only wrapped in `ReadOnlyStore`, which refuses
every write and counts every call by its S3 operation name, so a plan cannot write (a bug that tried would fail the
object, loudly) and the requests it made are known. The requests a run would make are those the plan made to list
and compare (a run lists and compares the same way) plus, per object, the copy and delete requests its mechanism
sends, estimated from its size and ETag as mover.py would choose.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from datamover.backends.base import (
    BetweenRequests,
    ByteStream,
    ErrorKind,
    ListPage,
    ObjectAttributes,
    ObjectInfo,
    ObjectStore,
    ObjectSummary,
    OpenUpload,
    PartLimits,
    ServerSideCopy,
    StoreError,
)
from datamover.engine.multipart import choose_part_size
from datamover.engine.progress import Amount, Plan

# Request kinds, named as S3's API names its operations (what a price list counts); other stores' calls are
# counted under the S3 operation they stand for.
LIST = "ListObjectsV2"
HEAD_BUCKET = "HeadBucket"
HEAD = "HeadObject"
GET = "GetObject"
PUT = "PutObject"
CREATE_UPLOAD = "CreateMultipartUpload"
UPLOAD_PART = "UploadPart"
UPLOAD_PART_COPY = "UploadPartCopy"
COMPLETE_UPLOAD = "CompleteMultipartUpload"
LIST_UPLOADS = "ListMultipartUploads"
COPY = "CopyObject"
DELETE = "DeleteObject"

# The copy mechanisms, as mover.py names them in ObjectCopy.strategy.
MECHANISMS = ("single", "multipart", "server_copy", "server_part_copy")


class PlanWriteRefused(StoreError):
    """A plan tried to write: a bug, refused before any request leaves."""


class ReadOnlyStore(ObjectStore):
    """`store` as a plan sees it: reads pass through and are counted by kind, every write is refused."""

    def __init__(self, store: ObjectStore) -> None:
        self.inner = store
        self.bucket, self.prefix, self.capabilities = store.bucket, store.prefix, store.capabilities
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()

    def requests(self) -> dict[str, int]:
        """The calls made so far, by kind."""
        with self._lock:
            return dict(self._requests)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] += 1

    def _refuse(self, what: str, key: str) -> PlanWriteRefused:
        return PlanWriteRefused(ErrorKind.PERMANENT, f"plan mode writes nothing, {what} refused: {self.describe(key)}")

    def describe(self, key: str | None = None) -> str:
        return self.inner.describe(key)

    def check_access(self) -> None:
        self._count(HEAD_BUCKET)
        self.inner.check_access()

    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        self._count(LIST)
        return self.inner.list_page(prefix, token, start_after)

    def stat(self, key: str) -> ObjectInfo | None:
        self._count(HEAD)
        return self.inner.stat(key)

    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        self._count(GET)
        return self.inner.open_read(key, start, end, if_match)

    def first_part_size(self, key: str) -> int | None:
        self._count(HEAD)
        return self.inner.first_part_size(key)

    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        self._count(LIST_UPLOADS)
        return self.inner.list_uploads(key)

    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        raise self._refuse(PUT, key)

    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        raise self._refuse(CREATE_UPLOAD, key)

    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        raise self._refuse(UPLOAD_PART, upload.key)

    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        raise self._refuse(COMPLETE_UPLOAD, upload.key)

    def abort_upload(self, upload: OpenUpload) -> None:
        raise self._refuse("AbortMultipartUpload", upload.key)

    def delete(self, key: str) -> None:
        raise self._refuse(DELETE, key)

    def stored_as_configured(self, info: ObjectInfo) -> bool:
        return self.inner.stored_as_configured(info)

    def stalled_for(self) -> float:
        return self.inner.stalled_for()

    def interrupt(self, reason: str) -> None:
        self.inner.interrupt(reason)


class RefusingCopier(ServerSideCopy):
    """Stands for the run's server-side copier in a plan: the comparison asks whether there is one (it decides how a
    multipart source is compared), and nothing may copy."""

    def can_copy_from(self, source: ObjectStore) -> bool:
        return True

    def copy_object(
        self, source: ObjectStore, source_key: str, key: str, if_match: str, storage_class: str | None = None,
        between_requests: BetweenRequests | None = None,
    ) -> str:
        raise PlanWriteRefused(ErrorKind.PERMANENT, f"plan mode writes nothing, {COPY} refused: {key!r}")

    def copy_part(
        self, source: ObjectStore, source_key: str, upload: OpenUpload, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        raise PlanWriteRefused(ErrorKind.PERMANENT, f"plan mode writes nothing, {UPLOAD_PART_COPY} refused")


@dataclass(frozen=True)
class RunEstimate:
    """How a run would copy one object that is not already at the destination, and the requests it would send."""

    mechanism: str
    source: Mapping[str, int]
    destination: Mapping[str, int]


def estimate_copy(
    summary: ObjectSummary, *, server_side: bool, part_size: int, multipart_threshold: int, limits: PartLimits,
    source_part_layout: bool, move: bool, source_stated: bool = False,
) -> RunEstimate:
    """The copy (and, for a move, delete) requests mover.py sends for `summary`, by side, after the comparison.

    Mirrors ObjectMover._copy: one CopyObject up to the destination's single-copy limit when the store copies
    server-side; one GET and one PUT up to the multipart threshold otherwise; else a HEAD, an upload in parts (a
    multipart source in its own layout, when it tells it, else our part size grown to fit the part count), one
    listing of the key's uploads to confirm none is left, and a HEAD to verify. Retries are not counted.
    `source_stated`: the comparison already sent a HEAD to the source (the destination held the key at this size),
    which verification then uses instead of the CopyObject's answer.
    """
    size, multipart_source = summary.size, "-" in summary.etag
    source: Counter[str] = Counter()
    destination: Counter[str] = Counter()
    if server_side and size <= limits.single_copy_limit:
        mechanism = "server_copy"
        destination[COPY] += 1
        if source_stated:
            destination[HEAD] += 1
        elif multipart_source:  # the copy's ETag is its own: verified by a HEAD on each side
            source[HEAD] += 1
            destination[HEAD] += 1
    elif not server_side and size <= multipart_threshold:
        mechanism = "single"
        source[GET] += 1
        destination[PUT] += 1  # verified by the PUT's own answer (Content-MD5 and the MD5 ETag)
    else:
        mechanism = "server_part_copy" if server_side else "multipart"
        source[HEAD] += 1
        parts = -(-size // choose_part_size(size, part_size, limits)) if size else 1
        if multipart_source and source_part_layout:
            source[HEAD] += 1  # HEAD PartNumber=1: the source's own layout
            parts = int(summary.etag.rsplit("-", 1)[1])
        if server_side:
            destination[UPLOAD_PART_COPY] += parts
        else:
            source[GET] += parts
            destination[UPLOAD_PART] += parts
        destination.update({CREATE_UPLOAD: 1, COMPLETE_UPLOAD: 1, LIST_UPLOADS: 1, HEAD: 1})
    if move:
        source[DELETE] += 1
    return RunEstimate(mechanism, dict(source), dict(destination))


def add_requests(*counts: Mapping[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(sorted(total.items()))


class PlanTally:
    """The plan being made, counted from object threads."""

    def __init__(self, source: ReadOnlyStore, destination: ReadOnlyStore) -> None:
        self._source, self._destination = source, destination
        self._lock = threading.Lock()
        self._copy = self._identical = self._delete = self._excluded = Amount()
        self._mechanisms: dict[str, Amount] = {}
        self._run: dict[str, Counter[str]] = {"source": Counter(), "destination": Counter()}

    def excluded(self, size: int) -> None:
        with self._lock:
            self._excluded = self._excluded.plus(size)

    def identical(self, size: int, move: bool) -> None:
        with self._lock:
            self._identical = self._identical.plus(size)
            if move:
                self._delete = self._delete.plus(size)
                self._run["source"][DELETE] += 1

    def copy(self, size: int, estimate: RunEstimate, move: bool) -> None:
        with self._lock:
            self._copy = self._copy.plus(size)
            self._mechanisms[estimate.mechanism] = self._mechanisms.get(estimate.mechanism, Amount()).plus(size)
            self._run["source"].update(estimate.source)
            self._run["destination"].update(estimate.destination)
            if move:
                self._delete = self._delete.plus(size)

    def result(self) -> Plan:
        """The plan so far. A run lists and compares as the plan did: those requests are part of its estimate."""
        made = {"source": self._source.requests(), "destination": self._destination.requests()}
        with self._lock:
            run = {side: add_requests(made[side], self._run[side]) for side in made}
            return Plan(copy=self._copy, identical=self._identical, delete_from_source=self._delete,
                        excluded=self._excluded, by_mechanism=dict(self._mechanisms), run_requests=run,
                        plan_requests={side: add_requests(made[side]) for side in made})
