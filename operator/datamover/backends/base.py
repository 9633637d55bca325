"""The seam between the migration engine and a store family: a small required interface plus declared capabilities.

As rclone's `fs.Fs` and `fs.Features`: every store can list, stat, read a range, write whole, write in parts through
an upload handle that can be aborted, delete, and find the open uploads on a key (so the janitor works). What only
some stores can do is declared, and the engine asks for it instead of assuming S3: `Capabilities` (part limits, ETag
layout) and optional interfaces such as `ServerSideCopy`. Each store family (S3-compatible today, Azure Blob and GCS
later) lives in its own module, translates its client's errors into `StoreError` kinds, and passes the conformance
suite in tests/store_conformance.py. Nothing here knows about the FSM, abort checkpoints, sharding or Kubernetes.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class ObjectSummary:
    """One key as listing reports it."""

    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None = None  # aware UTC, when the listing says (spec.filter's time bounds)
    storage_class: str | None = None  # as the listing says; None is the store's default class


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
    # Object tags (S3 tags, Azure blob index tags); a store without tags (GCS) refuses an object that has some.
    tags: Mapping[str, str] = field(default_factory=dict)
    # The object's storage class in S3's names, the one vocabulary every backend maps its own to (Azure's Cool tier
    # is STANDARD_IA, GCS's NEARLINE too); None is the default class (STANDARD, Hot). A store without a counterpart
    # of the class refuses the object rather than storing it in another class.
    storage_class: str | None = None


class EtagKind(enum.Enum):
    """What an ETag says about the bytes, so verification compares only what is comparable (a store without MD5
    ETags reports OPAQUE, and the engine then reads bytes back instead)."""

    MD5 = "md5"  # hex MD5 of the content (single-part upload, no KMS / customer-key encryption)
    MULTIPART_MD5 = "multipart_md5"  # hex MD5 of the concatenated part MD5s, then "-<part count>"
    OPAQUE = "opaque"  # anything else (encrypted objects, stores with their own ETag scheme)


@dataclass(frozen=True)
class ObjectInfo:
    """What stat tells about one object: identity (size, ETag) and the attributes to carry over."""

    key: str
    size: int
    etag: str
    attributes: ObjectAttributes
    etag_kind: EtagKind = EtagKind.OPAQUE
    # Hex MD5 of the whole content when the store keeps one apart from the ETag (Azure's Content-MD5 property, GCS's
    # md5Hash), else None: lets stores with opaque ETags be compared without reading their bytes.
    content_md5: str | None = None
    # The server-side encryption the store reports for the object (S3: AES256, aws:kms), None if none is reported.
    encryption: str | None = None

    @property
    def known_md5(self) -> str | None:
        """The content's MD5 if this object states it, by its ETag or by a stored MD5."""
        return self.etag if self.etag_kind is EtagKind.MD5 else self.content_md5


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


# Writing an object without what it carries would be a silent degradation (the copy would look exact and not be):
# the two helpers below fail that object instead, naming what the store cannot take.

def refuse_tags(store: ObjectStore, key: str, attributes: ObjectAttributes) -> None:
    """For a store without object tags."""
    if attributes.tags:
        raise StoreError(ErrorKind.OTHER, f"the object has {len(attributes.tags)} tag(s), which this store cannot "
                                          f"keep: {store.describe(key)}", "TagsNotSupported")


def native_storage_class(store: ObjectStore, key: str, storage_class: str | None,
                         natives: Mapping[str, str]) -> str | None:
    """The store's own name (from `natives`, S3 name -> the store's) of a class; None for the default class."""
    if storage_class is None:
        return None
    native = natives.get(storage_class)
    if native is None:
        raise StoreError(ErrorKind.OTHER, f"the object's storage class {storage_class} has no counterpart in this "
                                          f"store (it has {', '.join(sorted(natives))}): {store.describe(key)}",
                         "StorageClassNotSupported")
    return native


def common_storage_class(native: str | None, natives: Mapping[str, str], default: str) -> str | None:
    """The S3 name of a store's own class (None for its default, or a class with no S3 counterpart: reported as
    the default rather than failing reads; the store's docs say which)."""
    if not native or native == default:
        return None
    return next((common for common, own in natives.items() if own == native), None)


class ByteStream(abc.ABC):
    """A body being downloaded; read() returns b"" at the end and raises StoreError(TRANSIENT) if the wire breaks.

    `info` describes the version being read (from the read's own response), so a small object needs no stat first.
    """

    info: ObjectInfo

    @abc.abstractmethod
    def read(self, size: int) -> bytes: ...

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class PartLimits:
    """How a store takes an object in parts (a provider quirk, as data): the engine sizes parts to fit."""

    min_part_size: int  # every part but the last
    max_part_size: int
    max_parts: int
    max_single_write: int  # the largest object written in one request
    max_single_copy: int = 0  # the largest object copied server-side in one request (0: as max_single_write)

    @property
    def single_copy_limit(self) -> int:
        return self.max_single_copy or self.max_single_write


# S3's limits, which most S3-compatible stores share; other stores declare their own.
S3_LIMITS = PartLimits(min_part_size=5 * MiB, max_part_size=5 * GiB, max_parts=10_000, max_single_write=5 * GiB,
                       max_single_copy=5 * GiB)


@dataclass(frozen=True)
class Capabilities:
    """What a store declares beyond the required interface; the conformance suite checks each claim."""

    limits: PartLimits = S3_LIMITS
    # first_part_size() tells how an object written in parts was cut, so a copy can reproduce its layout (and ETag)
    # and skip-identical can hash the source in the destination's layout.
    part_layout: bool = False


class ObjectStore(abc.ABC):
    """One bucket (and optional key prefix) in one store. Keys passed to methods are full keys, prefix included."""

    bucket: str
    prefix: str
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def describe(self, key: str | None = None) -> str:
        """Human text naming endpoint, bucket and (if given) key, for messages and logs; never a secret."""

    @abc.abstractmethod
    def check_access(self) -> None:
        """Fail with StoreError(PERMANENT) if the endpoint, credentials or bucket are unusable."""

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        """One page of keys under `prefix`, in key order (UTF-8 byte order): the first page of keys sorting after
        `start_after` (a full key; None: from the start), or the page after continuation `token`."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and attributes, or None if the key does not exist."""

    @abc.abstractmethod
    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        """Stream the object (or the inclusive byte range start..end); fail PRECONDITION if its ETag is not if_match."""

    @abc.abstractmethod
    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        """Store a whole object in one request; the store checks body against content_md5 (base64).

        Returns the new ETag if it is the content's MD5, else "" (encrypted or store-specific ETags).
        """

    @abc.abstractmethod
    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        """Begin writing `key` in parts. Sent once, never retried: a retried create whose answer was lost would leave
        an upload nobody knows the ID of (the engine reconciles a failed create by listing the key's uploads)."""

    @abc.abstractmethod
    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        """Write one part (numbered from 1); returns the part's ETag."""

    @abc.abstractmethod
    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        """Assemble the object from (part number, ETag) pairs; returns the object's ETag."""

    @abc.abstractmethod
    def abort_upload(self, upload: OpenUpload) -> None:
        """Discard an open upload and its parts; one already gone is no error, or NOT_FOUND (stores differ)."""

    @abc.abstractmethod
    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        """Every upload still open on exactly `key`, each with the time the store says it was initiated."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if it is already gone)."""

    def first_part_size(self, key: str) -> int | None:
        """Size of part 1 of an object written in parts, or None if unknown (declared by capabilities.part_layout)."""
        return None

    def stored_as_configured(self, info: ObjectInfo) -> bool:
        """Whether an object already here is stored as this store writes objects (e.g. the encryption it was told
        to ask for): one that is not is written again, even with the same bytes and attributes."""
        return True

    # Liveness, for the engine's stall detector: the defaults say "always answering".

    def stalled_for(self) -> float:
        """Seconds that requests have been waiting with no answer from the endpoint (0 if nothing is waiting)."""
        return 0.0

    def interrupt(self, reason: str) -> None:
        """Make every further request (and retry) fail at once with StoreError(PERMANENT, reason)."""
        return None


# Called by a server-side copy before each further request of a copy that takes several (a GCS rewrite of a large
# object): the engine's abort checkpoint, which raises to stop the copy there.
BetweenRequests = Callable[[], None]


class ServerSideCopy(abc.ABC):
    """Optional capability (rclone's Copier): the store copies from another store without the bytes passing us."""

    # Whether copy_part works: a store that copies only whole objects (GCS rewrite) says False, and declares a
    # single-copy limit (PartLimits.max_single_copy) as large as its largest object, so the engine never asks.
    copies_parts: bool = True

    @abc.abstractmethod
    def can_copy_from(self, source: ObjectStore) -> bool:
        """True if this store can copy from `source` server-side (same service, same credentials)."""

    @abc.abstractmethod
    def copy_object(
        self, source: ObjectStore, source_key: str, key: str, if_match: str, storage_class: str | None = None,
        between_requests: BetweenRequests | None = None,
    ) -> str:
        """Copy a whole object, its attributes included, into `storage_class` (None: the default); returns the new
        ETag. A copy that takes several requests calls `between_requests` before each further one."""

    @abc.abstractmethod
    def copy_part(
        self, source: ObjectStore, source_key: str, upload: OpenUpload, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        """Copy the inclusive byte range start..end of the source into one part; returns the part's ETag."""


def server_side_copier(destination: ObjectStore, source: ObjectStore) -> ServerSideCopy | None:
    """The destination as a server-side copier from `source`, or None if it cannot be one."""
    if isinstance(destination, ServerSideCopy) and destination.can_copy_from(source):
        return destination
    return None
