"""Google Cloud Storage behind `ObjectStore`, through the vendor SDK (google-cloud-storage, JSON API).

An upload in parts is a set of part objects composed into the final object (see docs/engine.md, "Google Cloud
Storage"). Resumable upload sessions take bytes in order only and cannot be listed, so a session whose URI was lost
could not be found again; the XML API's multipart uploads are listable but the SDK does not speak them. Part objects
are plain objects, so they can be written in parallel, listed and deleted by anyone with the location's permissions:

- every upload of a key lives in its own folder of the location's upload area,
  `<prefix>.datamover-uploads/<sha256(key), 32 hex>/<upload ID>/`, which listings of the location leave out;
- `create_upload` writes the folder's `marker` object (empty, its metadata naming the key) so an upload exists and
  is listable from its create on; its `timeCreated` (the store's clock) is the upload's `initiated`;
- part N is the object `<N, 5 digits>`; `complete_upload` composes them in order into the key (in two levels when
  there are more than 32, GCS's limit per compose), then deletes the folder, marker last;
- `abort_upload` deletes the folder's objects, marker last, so a half-deleted upload is still listed and found again.

Server-side copy, GCS to GCS with the same credentials, is the JSON API's rewrite (`copy_object`), pinned to the
generation the listing saw (`sourceGeneration`, and `ifSourceGenerationMatch` so a versioned bucket's older
generation is not copied either). A rewrite is one logical operation of any size with no fragment: a large object
may take several calls, each continuing from the last one's `rewriteToken`, and the object appears only when the last
completes; a rewrite stopped between calls leaves nothing to clean (its token merely expires). So the single-copy
limit is GCS's largest object and there is no part copy (`copies_parts = False`). See docs/engine.md.

Retries are the SDK's (idempotent requests, exponential backoff); what is left is classified into `StoreError` kinds
here. The ETag is the object's generation (what reads and copies can be pinned to). GCS has no Expires header: it
travels in reserved metadata and reads back exactly as written.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import google.auth.exceptions
import requests.exceptions
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from datamover.backends.base import (
    BetweenRequests,
    ByteStream,
    Capabilities,
    ErrorKind,
    EtagKind,
    GiB,
    ListPage,
    MiB,
    ObjectAttributes,
    ObjectInfo,
    ObjectStore,
    ObjectSummary,
    OpenUpload,
    PartLimits,
    ServerSideCopy,
    StoreError,
    common_storage_class,
    native_storage_class,
    refuse_tags,
)

log = logging.getLogger("datamover.backends.gcs")

COMPOSE_LIMIT = 32  # source objects per compose request
MAX_OBJECT = 5 * 1024 * GiB  # GCS's largest object
# Parts are composed in at most two levels (32 x 32); a part object may be up to 5 TiB but is buffered here, so 5 GiB.
# A rewrite copies any object whole, so the single-copy limit is the largest object: the engine never copies parts.
GCS_LIMITS = PartLimits(min_part_size=1 * MiB, max_part_size=5 * GiB, max_parts=COMPOSE_LIMIT * COMPOSE_LIMIT,
                        max_single_write=5 * GiB, max_single_copy=MAX_OBJECT)
UPLOAD_AREA = ".datamover-uploads/"
KEY_METADATA = "datamover-key"
EXPIRES_METADATA = "datamover-expires"
# Storage classes (S3's names) -> their GCS counterparts. Every copy names its class (STANDARD for the default), so a
# bucket whose default class is another one does not change it. GCS objects have no tags: a tagged object is refused.
STORAGE_CLASSES = {"STANDARD_IA": "NEARLINE", "GLACIER_IR": "COLDLINE", "DEEP_ARCHIVE": "ARCHIVE"}
DEFAULT_CLASS = "STANDARD"
READ_CHUNK = 8 * MiB

_PERMANENT_STATUS = frozenset({400, 401, 403})
# A rewrite is retried like the SDK's idempotent requests (see copy_object).
_REWRITE_RETRY: Retry = DEFAULT_RETRY


@dataclass(frozen=True)
class GcsConfig:
    """One bucket (and key prefix) in Google Cloud Storage. Secrets are excluded from repr."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: storage.googleapis.com; else an emulator or private endpoint
    project: str | None = None
    service_account_json: str | None = field(default=None, repr=False)  # a key file's text; None: ambient identity
    anonymous: bool = False  # no credentials at all (emulators, public buckets)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    stall_timeout: float = 60.0
    list_page_size: int = 1000

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("bucket must not be empty")
        if self.service_account_json:
            try:
                info = json.loads(self.service_account_json)
            except ValueError as error:
                raise ValueError("the service-account key is not JSON") from error
            if not isinstance(info, dict) or info.get("type") != "service_account":
                raise ValueError('the service-account key is not a key file (its "type" must be "service_account")')


def _area(prefix: str, key: str) -> str:
    return f"{prefix}{UPLOAD_AREA}{hashlib.sha256(key.encode()).hexdigest()[:32]}/"


class _GcsStream(ByteStream):
    """Reads start..end in READ_CHUNK ranges, each pinned to the generation the stream began with."""

    def __init__(self, store: GcsStore, blob: storage.Blob, start: int, end: int, info: ObjectInfo) -> None:
        self._store = store
        self._blob = blob
        self._next = start
        self._end = end
        self._buffer = b""
        self.info = info

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and self._next <= self._end:
            last = min(self._end, self._next + READ_CHUNK - 1)
            self._buffer += self._store.download(self._blob, self._next, last, self.info)
            self._next = last + 1
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def close(self) -> None:
        self._next = self._end + 1
        self._buffer = b""


class GcsStore(ObjectStore, ServerSideCopy):
    """One bucket of Google Cloud Storage, through a storage.Client."""

    capabilities = Capabilities(limits=GCS_LIMITS, part_layout=False)
    copies_parts = False  # a rewrite has no byte range; it copies any size whole

    def __init__(self, config: GcsConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        credentials: Credentials | None = None
        if config.service_account_json:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                json.loads(config.service_account_json))
        elif config.anonymous:
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        options = {"api_endpoint": config.endpoint} if config.endpoint else None
        self._no_credentials: str | None = None
        try:
            self.client = storage.Client(project=config.project or "-", credentials=credentials,
                                         client_options=options)
        except google.auth.exceptions.DefaultCredentialsError as error:
            # No key in the Secret and no identity on the pod: said as a configuration error at the first request
            # (check_access), so the worker fails permanently with a message, not with a traceback at start.
            self._no_credentials = (f"no usable credentials for {self.describe()}: the Secret has no "
                                    f"serviceAccountJson and the pod has no identity ({type(error).__name__})")
            self.client = storage.Client(project=config.project or "-",
                                         credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                                         client_options=options)
        self._bucket = self.client.bucket(config.bucket)
        cap = config.stall_timeout / 4
        self._timeout = (min(config.connect_timeout, cap), min(config.read_timeout, cap))
        self._pending_attributes: dict[str, ObjectAttributes] = {}
        self._lock = threading.Lock()
        self._interrupted: str | None = None

    # -- helpers ------------------------------------------------------------------------------------------------

    def describe(self, key: str | None = None) -> str:
        text = f"endpoint {self.config.endpoint or 'storage.googleapis.com'} bucket {self.bucket}"
        return f"{text} key {key!r}" if key is not None else text

    @contextlib.contextmanager
    def _errors(self, operation: str, key: str | None) -> Iterator[None]:
        if self._interrupted is not None:
            raise StoreError(ErrorKind.PERMANENT, self._interrupted, "Stalled")
        if self._no_credentials is not None:
            raise StoreError(ErrorKind.PERMANENT, self._no_credentials, "Credentials")
        try:
            yield
        except (api_exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError,
                requests.exceptions.RequestException, ValueError) as error:
            raise self._error(operation, key, error) from error

    def _error(self, operation: str, key: str | None, error: Exception) -> StoreError:
        where = self.describe(key)
        detail = (getattr(error, "message", "") or str(error)).splitlines()[0][:200] if str(error) else ""
        message = f"{operation} failed on {where}: {type(error).__name__}: {detail}"
        status = getattr(error, "code", None)
        if isinstance(error, api_exceptions.PreconditionFailed):
            return StoreError(ErrorKind.PRECONDITION, message, "412")
        if isinstance(error, api_exceptions.NotFound):
            return StoreError(ErrorKind.NOT_FOUND, message, "404")
        if isinstance(error, google.auth.exceptions.GoogleAuthError) or status in (401, 403):
            return StoreError(ErrorKind.PERMANENT, message, str(status or "Credentials"))
        if isinstance(error, api_exceptions.ServerError | api_exceptions.TooManyRequests
                      | api_exceptions.RetryError | requests.exceptions.RequestException):
            return StoreError(ErrorKind.TRANSIENT, f"{message} (after retries)", str(status or ""))
        if isinstance(error, api_exceptions.BadRequest) and "md5" in detail.lower():
            return StoreError(ErrorKind.OTHER, message, "BadDigest")
        return StoreError(ErrorKind.OTHER, message, str(status or ""))

    def _apply(self, blob: storage.Blob, attributes: ObjectAttributes) -> None:
        refuse_tags(self, blob.name, attributes)
        blob.storage_class = native_storage_class(self, blob.name, attributes.storage_class,
                                                  STORAGE_CLASSES) or DEFAULT_CLASS
        blob.content_type = attributes.content_type
        blob.content_encoding = attributes.content_encoding
        blob.cache_control = attributes.cache_control
        blob.content_disposition = attributes.content_disposition
        blob.content_language = attributes.content_language
        metadata = dict(attributes.user_metadata)
        if attributes.expires:
            metadata[EXPIRES_METADATA] = attributes.expires
        blob.metadata = metadata or None

    @staticmethod
    def _info(key: str, blob: storage.Blob) -> ObjectInfo:
        metadata = dict(blob.metadata or {})
        expires = metadata.pop(EXPIRES_METADATA, None)
        attributes = ObjectAttributes(
            content_type=blob.content_type or None, content_encoding=blob.content_encoding or None,
            cache_control=blob.cache_control or None, content_disposition=blob.content_disposition or None,
            content_language=blob.content_language or None, expires=expires, user_metadata=metadata,
            storage_class=common_storage_class(blob.storage_class, STORAGE_CLASSES, DEFAULT_CLASS),
        )
        # md5Hash: every object but a composed one (those carry only CRC32C).
        md5 = base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
        return ObjectInfo(key=key, size=int(blob.size or 0), etag=str(blob.generation), attributes=attributes,
                          etag_kind=EtagKind.OPAQUE, content_md5=md5)

    def download(self, blob: storage.Blob, start: int, end: int, info: ObjectInfo) -> bytes:
        """Bytes start..end of the generation `info` describes (a newer one fails PRECONDITION)."""
        with self._errors("GetObject", info.key):
            data: bytes = blob.download_as_bytes(start=start, end=end, if_generation_match=int(info.etag),
                                                 raw_download=True, checksum=None, timeout=self._timeout)
        return data

    # -- ObjectStore --------------------------------------------------------------------------------------------

    def check_access(self) -> None:
        try:
            with self._errors("GetBucket", None):
                # A listing needs only object permissions (a bucket GET needs storage.buckets.get too).
                list(self.client.list_blobs(self.bucket, max_results=1, timeout=self._timeout))
        except StoreError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                raise StoreError(ErrorKind.PERMANENT, f"bucket does not exist: {self.describe()}",
                                 "NoSuchBucket") from error
            if error.kind is not ErrorKind.TRANSIENT:
                raise StoreError(ErrorKind.PERMANENT, error.message, error.code) from error
            raise

    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        area = self.prefix + UPLOAD_AREA
        # startOffset is inclusive: the key itself is dropped here.
        after = start_after if token is None else None
        kwargs: dict[str, Any] = {"start_offset": after} if after else {}
        with self._errors("ListObjects", prefix):
            iterator = self.client.list_blobs(self.bucket, prefix=prefix, max_results=None,
                                              page_size=self.config.list_page_size, page_token=token,
                                              timeout=self._timeout, **kwargs)
            pages = iterator.pages
            while True:
                page = next(pages, None)
                blobs = list(page) if page is not None else []
                objects = [ObjectSummary(key=blob.name, size=int(blob.size or 0), etag=str(blob.generation),
                                         last_modified=blob.updated,
                                         storage_class=common_storage_class(blob.storage_class, STORAGE_CLASSES,
                                                                            DEFAULT_CLASS)) for blob in blobs
                           if not blob.name.startswith(area) and (after is None or blob.name.encode() > after.encode())]
                next_token = iterator.next_page_token or None
                if objects or next_token is None:
                    return ListPage(objects=objects, next_token=next_token)

    def stat(self, key: str) -> ObjectInfo | None:
        with self._errors("GetObjectMetadata", key):
            blob = self._bucket.get_blob(key, timeout=self._timeout)
        return None if blob is None else self._info(key, blob)

    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        with self._errors("GetObjectMetadata", key):
            blob = self._bucket.get_blob(key, timeout=self._timeout)
        if blob is None:
            raise StoreError(ErrorKind.NOT_FOUND, f"GetObject failed on {self.describe(key)}: no such object", "404")
        info = self._info(key, blob)
        if if_match and info.etag != if_match:
            raise StoreError(ErrorKind.PRECONDITION, f"GetObject failed on {self.describe(key)}: generation "
                                                     f"{info.etag} is not {if_match}", "412")
        first, last = (start, end) if start is not None and end is not None else (0, info.size - 1)
        return _GcsStream(self, blob, first, last, info)

    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        blob = self._bucket.blob(key)
        self._apply(blob, attributes)
        blob.md5_hash = content_md5  # sent with the object's metadata: the service checks the body against it
        with self._errors("PutObject", key):
            blob.upload_from_string(body, content_type=attributes.content_type, checksum=None, timeout=self._timeout)
        return ""  # the generation is our ETag, never the MD5

    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        self._apply(self._bucket.blob(key), attributes)  # refused before any part is written, not at the compose
        upload_id = secrets.token_hex(8)
        marker = self._bucket.blob(f"{_area(self.prefix, key)}{upload_id}/marker")
        marker.metadata = {KEY_METADATA: key}
        with self._errors("PutObject (upload marker)", key):
            # Only if absent: a create is sent once, and a retry must not replace a marker another create wrote.
            marker.upload_from_string(b"", if_generation_match=0, timeout=self._timeout)
        with self._lock:
            self._pending_attributes[upload_id] = attributes
        return OpenUpload(self.bucket, key, upload_id, marker.time_created)

    def _part(self, upload: OpenUpload, name: str, generation: int | None = None) -> storage.Blob:
        return self._bucket.blob(f"{_area(self.prefix, upload.key)}{upload.upload_id}/{name}", generation=generation)

    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        part = self._part(upload, f"{part_number:05d}")
        part.md5_hash = content_md5
        with self._errors(f"PutObject (part {part_number})", upload.key):
            part.upload_from_string(body, checksum=None, timeout=self._timeout)
        return str(part.generation)

    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        with self._lock:
            attributes = self._pending_attributes.get(upload.upload_id)
        if attributes is None:
            raise StoreError(ErrorKind.OTHER, f"upload {upload.upload_id} was not created by this process; it can "
                                              f"only be aborted: {self.describe(upload.key)}")
        if len(parts) > GCS_LIMITS.max_parts:
            raise StoreError(ErrorKind.OTHER, f"{len(parts)} parts exceed {GCS_LIMITS.max_parts} on "
                                              f"{self.describe(upload.key)}")
        # Exactly the generations written (a part rewritten by a retry is composed as the engine saw it).
        sources = [self._part(upload, f"{number:05d}", int(generation)) for number, generation in sorted(parts)]
        if len(sources) > COMPOSE_LIMIT:
            groups = [sources[i:i + COMPOSE_LIMIT] for i in range(0, len(sources), COMPOSE_LIMIT)]
            sources = []
            for index, group in enumerate(groups):
                level = self._part(upload, f"c{index:05d}")
                with self._errors("ComposeObject (level 1)", upload.key):
                    level.compose(group, timeout=self._timeout)
                sources.append(level)
        destination = self._bucket.blob(upload.key)
        self._apply(destination, attributes)
        with self._errors("ComposeObject", upload.key):
            destination.compose(sources, timeout=self._timeout)
        with self._lock:
            self._pending_attributes.pop(upload.upload_id, None)
        self._delete_upload(upload)
        return str(destination.generation)

    def _delete_upload(self, upload: OpenUpload) -> None:
        folder = f"{_area(self.prefix, upload.key)}{upload.upload_id}/"
        with self._errors("ListObjects (upload)", upload.key):
            names = [blob.name for blob in self.client.list_blobs(self.bucket, prefix=folder, timeout=self._timeout)]
        # Marker last: while anything of the upload is left, a listing still finds the upload.
        for name in sorted(names, key=lambda n: n.endswith("/marker")):
            with self._errors("DeleteObject (upload)", upload.key), contextlib.suppress(api_exceptions.NotFound):
                self._bucket.delete_blob(name, timeout=self._timeout)

    def abort_upload(self, upload: OpenUpload) -> None:
        with self._lock:
            self._pending_attributes.pop(upload.upload_id, None)
        self._delete_upload(upload)

    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        area = _area(self.prefix, key)
        with self._errors("ListObjects (uploads)", key):
            blobs = list(self.client.list_blobs(self.bucket, prefix=area, timeout=self._timeout))
        initiated: dict[str, Any] = {}  # upload ID -> the marker's timeCreated (else its earliest object's)
        foreign: set[str] = set()  # uploads of another key whose hash shares the 32 hex digits
        for blob in blobs:
            upload_id, _, name = blob.name[len(area):].partition("/")
            if name == "marker":
                if (blob.metadata or {}).get(KEY_METADATA, key) != key:
                    foreign.add(upload_id)
                initiated[upload_id] = blob.time_created
            elif upload_id not in initiated or blob.time_created < initiated[upload_id]:
                initiated[upload_id] = blob.time_created
        for upload_id, since in sorted(initiated.items()):
            if upload_id not in foreign:
                yield OpenUpload(self.bucket, key, upload_id, since)

    def delete(self, key: str) -> None:
        with self._errors("DeleteObject", key), contextlib.suppress(api_exceptions.NotFound):
            self._bucket.delete_blob(key, timeout=self._timeout)

    def interrupt(self, reason: str) -> None:
        self._interrupted = reason

    # -- ServerSideCopy -----------------------------------------------------------------------------------------

    def can_copy_from(self, source: ObjectStore) -> bool:
        # The destination's client sends the rewrite, so its credentials must read the source: the same endpoint and
        # the same identity (the same key, or both the pod's own, or both anonymous on an emulator).
        return (isinstance(source, GcsStore) and source.config.endpoint == self.config.endpoint
                and source.config.service_account_json == self.config.service_account_json
                and source.config.anonymous == self.config.anonymous)

    def _changed_or_gone(self, source: GcsStore, source_key: str, generation: int, operation: str) -> StoreError:
        """The source's generation `generation` is not there: PRECONDITION if the key has another one now (it was
        rewritten since it was listed), NOT_FOUND if the key is gone."""
        now = source.stat(source_key)
        where = source.describe(source_key)
        if now is None:
            return StoreError(ErrorKind.NOT_FOUND, f"{operation} failed: the source is gone: {where}", "404")
        return StoreError(ErrorKind.PRECONDITION, f"{operation} failed: the source is now generation {now.etag}, "
                                                  f"not {generation}: {where}", "412")

    def copy_object(
        self, source: ObjectStore, source_key: str, key: str, if_match: str, storage_class: str | None = None,
        between_requests: BetweenRequests | None = None,
    ) -> str:
        assert isinstance(source, GcsStore)
        operation = f"RewriteObject from {source.bucket}/{source_key!r}"
        if not if_match.isdigit():  # our ETags are generations: any other cannot be this object's
            raise StoreError(ErrorKind.PRECONDITION, f"{operation} failed: {if_match!r} is no generation: "
                                                     f"{source.describe(source_key)}", "412")
        generation = int(if_match)
        # The source's attributes of exactly that generation, set on the destination explicitly: what a rewrite
        # carries over when its body leaves a field out is the service's choice, and the job may name the class.
        with source._errors(f"GetObjectMetadata (generation {generation})", source_key):
            pinned = source._bucket.get_blob(source_key, generation=generation, timeout=source._timeout)
        if pinned is None:
            raise self._changed_or_gone(source, source_key, generation, operation)
        attributes = self._info(source_key, pinned).attributes
        destination = self._bucket.blob(key)
        self._apply(destination, dataclasses.replace(attributes, storage_class=storage_class))
        wanted_class = destination.storage_class
        token: str | None = None
        while True:
            try:
                with self._errors(operation, key):
                    # Sent again on a lost answer: a rewrite of one pinned generation writes the same object again,
                    # and leaves no fragment behind (the SDK retries it only if told, as it cannot know that).
                    token, _, _ = destination.rewrite(
                        source._bucket.blob(source_key, generation=generation), token=token,
                        if_source_generation_match=generation, timeout=self._timeout, retry=_REWRITE_RETRY,
                    )
            except StoreError as error:
                if error.kind is ErrorKind.NOT_FOUND:  # a generation that is gone is a 404 (sourceGeneration)
                    raise self._changed_or_gone(source, source_key, generation, operation) from error
                raise
            if token is None:
                break
            if between_requests is not None:
                between_requests()  # the engine's abort checkpoint: stopping here leaves nothing to undo
        if destination.storage_class != wanted_class:
            # fake-gcs-server (v1.56.1) writes a rewrite's copy in STANDARD whatever the destination names; GCS sets
            # the class named. A copy in another class than asked is not exact: removed, and the object fails.
            with self._errors("DeleteObject (copy in the wrong class)", key), contextlib.suppress(
                    api_exceptions.NotFound, api_exceptions.PreconditionFailed):
                self._bucket.delete_blob(key, if_generation_match=destination.generation, timeout=self._timeout)
            raise StoreError(ErrorKind.OTHER, f"{operation} wrote storage class {destination.storage_class}, not "
                                              f"{wanted_class}; the copy was removed: {self.describe(key)}",
                             "StorageClassNotKept")
        return str(destination.generation)

    def copy_part(
        self, source: ObjectStore, source_key: str, upload: OpenUpload, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        raise StoreError(ErrorKind.OTHER, f"GCS copies no byte range server-side (a rewrite copies whole objects, of "
                                          f"any size): {self.describe(upload.key)}", "RangeCopyNotSupported")
