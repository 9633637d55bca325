"""The seam between the migration engine and a store family: what the engine may ask of any object store.

The engine is written once against `ObjectStore`; each store family (S3-compatible today, Azure Blob later) lives in
its own module and translates its client's errors into `StoreError` kinds. Nothing here knows about the FSM, abort
checkpoints, sharding or Kubernetes.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObjectSummary:
    """One key as listing reports it."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectAttributes:
    """The headers that travel with an object's bytes and must survive a migration."""

    content_type: str | None = None
    content_encoding: str | None = None
    cache_control: str | None = None
    content_disposition: str | None = None
    content_language: str | None = None
    expires: str | None = None  # the Expires header exactly as the store returned it (an HTTP date, usually)
    user_metadata: Mapping[str, str] = field(default_factory=dict)


class EtagKind(enum.Enum):
    """What an ETag says about the bytes, so verification compares only what is comparable."""

    MD5 = "md5"  # hex MD5 of the content (single-part upload, no KMS / customer-key encryption)
    MULTIPART_MD5 = "multipart_md5"  # hex MD5 of the concatenated part MD5s, then "-<part count>"
    OPAQUE = "opaque"  # anything else (encrypted objects, stores with their own ETag scheme)


@dataclass(frozen=True)
class ObjectHead:
    """What HEAD tells about one object: identity (size, ETag) and the attributes to carry over."""

    key: str
    size: int
    etag: str
    attributes: ObjectAttributes
    etag_kind: EtagKind = EtagKind.OPAQUE


@dataclass(frozen=True)
class ListPage:
    """One page of a listing; `next_token` is None on the last page."""

    objects: Sequence[ObjectSummary]
    next_token: str | None


@dataclass(frozen=True)
class OpenUpload:
    """An upload in parts that is neither completed nor aborted: the one handle for it, whether we just created it,
    a status record names it, or a listing of the store found it. Equal when bucket, key and ID are."""

    bucket: str
    key: str
    upload_id: str
    # When the store says it began (aware UTC, the store's clock), as a listing reports it; tells an upload of ours
    # (initiated after our intent) from another tool's.
    initiated: dt.datetime | None = field(default=None, compare=False)


class ErrorKind(enum.Enum):
    """How the engine should react to a store error."""

    # Credentials, bucket, endpoint or permissions are wrong: retrying or moving on to the next object cannot help.
    PERMANENT = "permanent"
    # The object (or upload) is not there.
    NOT_FOUND = "not_found"
    # The object changed between listing and copying (If-Match failed).
    PRECONDITION = "precondition"
    # Still failing after the client's bounded retries (5xx, throttling, resets, timeouts).
    TRANSIENT = "transient"
    # Anything else the store refused for this one request.
    OTHER = "other"


class StoreError(Exception):
    """An error from a store, with a message that names endpoint, bucket and key and never a secret."""

    def __init__(self, kind: ErrorKind, message: str, code: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code


class ByteStream(abc.ABC):
    """A body being downloaded; read() returns b"" at the end and raises StoreError(TRANSIENT) if the wire breaks.

    `head` describes the version being read (from the GET response itself), so a small object needs no HEAD first.
    """

    head: ObjectHead

    @abc.abstractmethod
    def read(self, size: int) -> bytes: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class ObjectStore(abc.ABC):
    """One bucket (and optional key prefix) in one store. Keys passed to methods are full keys, prefix included."""

    bucket: str
    prefix: str

    @abc.abstractmethod
    def describe(self, key: str | None = None) -> str:
        """Human text naming endpoint, bucket and (if given) key, for messages and logs; never a secret."""

    @abc.abstractmethod
    def check_access(self) -> None:
        """Fail with StoreError(PERMANENT) if the endpoint, credentials or bucket are unusable."""

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None) -> ListPage:
        """One page of keys under `prefix`, in key order, starting after `token`."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectHead | None:
        """The object's head, or None if the key does not exist."""

    @abc.abstractmethod
    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        """Stream the object (or the inclusive byte range start..end); fail PRECONDITION if its ETag is not if_match."""

    @abc.abstractmethod
    def first_part_size(self, key: str) -> int | None:
        """Size of part 1 of a multipart object (HEAD with PartNumber=1), or None if the store cannot say."""

    @abc.abstractmethod
    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        """Store a whole object in one request; the store checks body against content_md5 (base64).

        Returns the new ETag if it is the content's MD5, else "" (encrypted or store-specific ETags).
        """

    @abc.abstractmethod
    def create_multipart(self, key: str, attributes: ObjectAttributes) -> str:
        """Open a multipart upload and return its upload ID."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes, content_md5: str) -> str:
        """Upload one part (numbered from 1); returns the part's ETag."""

    @abc.abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """Assemble the object from (part number, ETag) pairs; returns the object's ETag."""

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discard an open multipart upload and its parts; NOT_FOUND if it is already gone."""

    @abc.abstractmethod
    def list_multipart_uploads(self, prefix: str) -> Iterator[OpenUpload]:
        """Every multipart upload still open under `prefix`, with the time the store says it was initiated.

        Some stores (MinIO) list nothing for a folder-like prefix while uploads are open below it: callers that
        look for uploads on one key pass the exact key as prefix and filter on `key`.
        """

    @abc.abstractmethod
    def can_copy_server_side_from(self, source: ObjectStore) -> bool:
        """True if this store can copy from `source` without the bytes passing through us (same service, same keys)."""

    @abc.abstractmethod
    def copy_object(self, source: ObjectStore, source_key: str, key: str, if_match: str) -> str:
        """Server-side copy of a whole object, its attributes included; returns the new ETag."""

    @abc.abstractmethod
    def upload_part_copy(
        self, source: ObjectStore, source_key: str, key: str, upload_id: str, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        """Server-side copy of the inclusive byte range start..end into one part; returns the part's ETag."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if it is already gone)."""

    # Optional capability (a default that does nothing): liveness, for the engine's stall detector.

    def stalled_for(self) -> float:
        """Seconds that requests have been waiting with no answer from the endpoint (0 if nothing is waiting)."""
        return 0.0

    def interrupt(self, reason: str) -> None:
        """Make every further request (and retry) fail at once with StoreError(PERMANENT, reason)."""
        return None
