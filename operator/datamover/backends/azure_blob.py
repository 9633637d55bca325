"""Azure Blob Storage (block blobs) behind `ObjectStore`, through the vendor SDK (azure-storage-blob).

An upload in parts is a set of uncommitted blocks on the blob, committed by Put Block List. Azure has no upload
object to create, list or abort, so this module gives it one (see docs/engine.md, "Azure Blob"):

- `create_upload` stages a one-byte marker block whose ID carries the upload ID (the creation time in whole seconds
  and 8 random hex digits), so an upload exists and is listable from its create on, before any part;
- part N is the block `<upload ID>-<N, 6 digits>` (Azure requires one ID length per blob: every ID of ours is 25
  characters before base64); `complete_upload` commits parts 1..N, which discards every other uncommitted block of
  the blob, the marker included;
- `list_uploads` reads the blob's uncommitted block list and groups our IDs by upload; `initiated` is the time in the
  upload ID (the writer's clock, as the engine's intent is);
- `abort_upload`: Azure cannot delete uncommitted blocks on their own. When no committed blob exists on the key (a
  migration's usual case) an empty blob is written only-if-absent and deleted only-if-unchanged, which discards every
  uncommitted block of that name. When a committed blob exists, nothing is touched: readers keep seeing it, and Azure
  discards the blocks at the blob's next commit or after seven days; the abort fails with ErrorKind.OTHER saying so,
  and the janitor keeps the intent and tries again.

Credentials: a Shared Key, a SAS token, an Entra ID service principal (client secret), or the pod's Azure Workload
Identity (its federated token). The last two go through azure-identity, imported only when a store uses them: it
brings MSAL and PyJWT, which an account-key job never needs.

Retries are azure-core's (exponential backoff on 408/429/5xx and connection errors); what is left is classified into
`StoreError` kinds here. Azure has no Expires header and allows only C#-identifier metadata names, so both travel in
reserved metadata entries (`metadata_to_azure`), and read back exactly as written.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    ExponentialRetry,
    StandardBlobTier,
    UserDelegationKey,
    generate_blob_sas,
)

from datamover.backends.base import (
    BetweenRequests,
    ByteStream,
    Capabilities,
    ErrorKind,
    EtagKind,
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
)

log = logging.getLogger("datamover.backends.azure_blob")

# Azure's block blob limits (service version 2019-12-12 and later): 50,000 blocks of up to 4000 MiB, and up to
# 5000 MiB in one Put Blob. No minimum block size; 1 MiB keeps part counts sane.
# Copy Blob From URL (synchronous: the only whole-object copy done when the request returns) takes up to 256 MiB, so
# it is the single-copy limit: a larger Azure-to-Azure copy goes in parts, by Put Block From URL.
MAX_SYNC_COPY = 256 * MiB
AZURE_LIMITS = PartLimits(min_part_size=1 * MiB, max_part_size=4000 * MiB, max_parts=50_000,
                          max_single_write=5000 * MiB, max_single_copy=MAX_SYNC_COPY)

# Reserved metadata names (valid C# identifiers, as Azure requires): the Expires header, and the prefix of a user
# metadata name that is not a valid identifier, stored as the hex of its UTF-8 bytes.
EXPIRES_NAME = "datamover_expires"
ENCODED_NAME_PREFIX = "datamover_x_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Storage classes (S3's names) -> the access tier that is their counterpart; Hot is the default class. S3's other
# classes (REDUCED_REDUNDANCY, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER) have none, and objects in them are refused.
ACCESS_TIERS = {"STANDARD_IA": "Cool", "GLACIER_IR": "Cold", "DEEP_ARCHIVE": "Archive"}
DEFAULT_TIER = "Hot"
# How long a source SAS made for one server-side copy request stays valid.
COPY_SAS_LIFETIME = dt.timedelta(hours=1)
# A user delegation key (what a source signed in with Entra ID signs its copy SAS with) is asked for this long, and
# asked again when less than one SAS lifetime of it is left; Azure allows up to seven days.
DELEGATION_KEY_LIFETIME = 4 * COPY_SAS_LIFETIME

# Entra ID's own hosts (public, China, US Government), whose authority MSAL confirms by instance discovery. Another
# host (a test's token issuer, a private cloud) can only be used with discovery off: the Secret (or the pod's
# AZURE_AUTHORITY_HOST) that names it is trusted as much as the client secret it holds.
KNOWN_AUTHORITY_HOSTS = frozenset({"login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us"})
# The variables the Azure Workload Identity webhook sets on a pod whose ServiceAccount it federates.
WORKLOAD_IDENTITY_VARIABLES = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE")

_UPLOAD_ID = re.compile(r"(?P<upload>(?P<since>\d{10})[0-9a-f]{8})-(?P<part>\d{6})")
_MARKER_PART = 0

# Azure error codes that no retry and no other object can fix: the worker stops and says what is misconfigured.
_PERMANENT_CODES = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch", "ContainerNotFound",
    "InvalidAuthenticationInfo", "AccountIsDisabled", "InsufficientAccountPermissions", "InvalidResourceName",
    "AuthorizationResourceTypeMismatch", "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch",
})


@dataclass(frozen=True)
class AzureBlobConfig:
    """One container (and key prefix) in one storage account. Secrets are excluded from repr."""

    container: str
    account_url: str  # https://<account>.blob.core.windows.net, or an emulator's http://127.0.0.1:<port>/<account>
    prefix: str = ""
    account_name: str | None = None  # with account_key: Shared Key authorization
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)  # a container or account SAS, without the leading "?"
    # An Entra ID service principal: tenant, application (client) ID and a client secret.
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    authority_host: str | None = None  # Entra ID's host for sovereign clouds; empty = the public cloud's
    # No secret at all: the pod's Azure Workload Identity (the AZURE_* variables its webhook injects).
    workload_identity: bool = False
    credentials_name: str | None = None  # where the credentials came from (a Secret's name), for messages only
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    stall_timeout: float = 60.0
    max_attempts: int = 5
    max_pool_connections: int = 32
    list_page_size: int = 1000

    def __post_init__(self) -> None:
        if not self.container:
            raise ValueError("container must not be empty")
        if not self.account_url:
            raise ValueError("account_url must not be empty")
        if self.account_key and not self.account_name:
            raise ValueError("an account key needs the account name")
        if self.client_secret and not (self.tenant_id and self.client_id):
            raise ValueError("a service principal's clientSecret needs its tenantId and clientId")

    @property
    def uses_entra_id(self) -> bool:
        """Signed in with an Entra ID token (a service principal or workload identity), not a key or SAS."""
        return not (self.account_key or self.sas_token) and bool(self.client_secret or self.workload_identity)

    @property
    def bucket(self) -> str:
        return self.container


def metadata_to_azure(attributes: ObjectAttributes) -> dict[str, str]:
    """User metadata (and Expires) as Azure metadata: names Azure refuses are encoded, reversibly."""
    metadata = {}
    for name, value in attributes.user_metadata.items():
        if _IDENTIFIER.fullmatch(name) and not name.lower().startswith("datamover_"):
            metadata[name] = value
        else:
            metadata[ENCODED_NAME_PREFIX + name.encode().hex()] = value
    if attributes.expires:
        metadata[EXPIRES_NAME] = attributes.expires
    return metadata


def metadata_from_azure(metadata: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """(user metadata, Expires) from Azure metadata, the inverse of metadata_to_azure."""
    user: dict[str, str] = {}
    expires = None
    for name, value in metadata.items():
        lowered = name.lower()
        if lowered == EXPIRES_NAME:
            expires = value
        elif lowered.startswith(ENCODED_NAME_PREFIX):
            try:
                user[bytes.fromhex(name[len(ENCODED_NAME_PREFIX):]).decode()] = value
            except ValueError:
                user[name] = value
        else:
            user[name] = value
    return user, expires


def _block_id(upload_id: str, part_number: int) -> str:
    return base64.b64encode(f"{upload_id}-{part_number:06d}".encode()).decode()


def _parse_block_id(block_id: str) -> tuple[str, int, dt.datetime] | None:
    """(upload ID, part number, initiated) for a block ID of ours, None for anyone else's."""
    try:
        raw = base64.b64decode(block_id, validate=True).decode()
    except ValueError:
        return None
    match = _UPLOAD_ID.fullmatch(raw)
    if match is None:
        return None
    return match["upload"], int(match["part"]), dt.datetime.fromtimestamp(int(match["since"]), dt.UTC)


def _authority_discovery_off(host: str | None) -> bool:
    """Whether MSAL's instance discovery must be off for this authority host (one that is not Entra ID's own)."""
    if not host:
        return False
    bare = host.split("://", 1)[-1].strip("/").lower()
    return bare not in KNOWN_AUTHORITY_HOSTS


def entra_id_credential(config: AzureBlobConfig) -> TokenCredential:
    """The azure-identity credential a config signs in with; ValueError says what is missing.

    No network call is made here: the first token is asked for at the store's first request, so a refused secret
    is a failed request (ClientAuthenticationError) that the store reports as a configuration error.
    """
    # Imported here: azure-identity (with MSAL and PyJWT) loads only for a job that signs in with Entra ID.
    from azure.identity import ClientSecretCredential, WorkloadIdentityCredential

    if config.client_secret:
        return ClientSecretCredential(
            config.tenant_id or "", config.client_id or "", config.client_secret,
            authority=config.authority_host or None,
            disable_instance_discovery=_authority_discovery_off(config.authority_host),
        )
    missing = [name for name in WORKLOAD_IDENTITY_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set (the Azure Workload Identity webhook sets them on a pod whose "
                         "ServiceAccount is federated)")
    # Tenant, client, token file and authority come from the webhook's variables.
    return WorkloadIdentityCredential(
        disable_instance_discovery=_authority_discovery_off(os.environ.get("AZURE_AUTHORITY_HOST")))


class _StorageRetry(ExponentialRetry):
    """azure-storage's own retries, except of a token Entra ID refused.

    A token request that fails reaches the storage pipeline as ClientAuthenticationError, which its retry policy
    would send again, with back-off, up to max_attempts times: minutes of waiting and a token request each time
    for a wrong client secret. azure-identity has already retried what was transient (5xx, 429, connection errors)
    in its own pipeline, so what arrives here is an answer: the store reports it at once.
    """

    def increment(self, settings: dict[str, Any], request: Any, response: Any = None,
                  error: AzureError | None = None) -> bool:
        if isinstance(error, ClientAuthenticationError):
            return False
        return super().increment(settings, request, response, error)


class _AzureStream(ByteStream):
    def __init__(self, chunks: Iterator[bytes], where: str, info: ObjectInfo) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._where = where
        self.info = info

    def read(self, size: int) -> bytes:
        try:
            while len(self._buffer) < size:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer += chunk
        except (AzureError, OSError) as error:
            raise StoreError(ErrorKind.TRANSIENT, f"download interrupted on {self._where}: {error}") from error
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def close(self) -> None:
        self._chunks = iter(())


class AzureBlobStore(ObjectStore, ServerSideCopy):
    """One container of one storage account, through a BlobServiceClient.

    Server-side copies read the source through a URL the service fetches itself: Copy Blob From URL (synchronous,
    attributes included, pinned with x-ms-source-if-match) for whole objects, Put Block From URL for parts. The
    source is authorized by a short read-only SAS made from its account key, by its own SAS token, or (signed in with
    Entra ID) by a user delegation SAS signed with a key from Get User Delegation Key.
    """

    capabilities = Capabilities(limits=AZURE_LIMITS, part_layout=False)

    def __init__(self, config: AzureBlobConfig) -> None:
        self.config = config
        self.bucket = config.container
        self.prefix = config.prefix
        credential: Any = None
        # Said at the first request instead of at start, so the worker fails permanently with a message.
        self._no_credentials: str | None = None
        if config.account_key:
            credential = {"account_name": config.account_name, "account_key": config.account_key}
        elif config.sas_token:
            credential = config.sas_token.lstrip("?")
        elif config.uses_entra_id:
            try:
                credential = entra_id_credential(config)
            except ValueError as error:
                self._no_credentials = f"no usable credentials for {self.describe()}: {self._signer()}: {error}"
        self._delegation_key: tuple[UserDelegationKey, dt.datetime] | None = None  # with its expiry
        cap = config.stall_timeout / 4
        self.service = BlobServiceClient(
            config.account_url, credential=credential, retry_policy=_StorageRetry(retry_total=config.max_attempts - 1),
            connection_timeout=min(config.connect_timeout, cap), read_timeout=min(config.read_timeout, cap),
            max_single_get_size=4 * MiB, max_chunk_get_size=4 * MiB, max_single_put_size=AZURE_LIMITS.max_single_write,
        )
        self.container: ContainerClient = self.service.get_container_client(config.container)
        # Attributes given at create_upload, applied at the commit (Azure sets them with Put Block List). An upload
        # is only ever completed by the process that created it; a successor aborts.
        self._pending_attributes: dict[str, ObjectAttributes] = {}
        self._lock = threading.Lock()
        self._interrupted: str | None = None

    # -- helpers ------------------------------------------------------------------------------------------------

    def describe(self, key: str | None = None) -> str:
        text = f"endpoint {self.config.account_url} container {self.bucket}"
        return f"{text} key {key!r}" if key is not None else text

    def _signer(self) -> str:
        """Who signs in to Entra ID, for messages: the principal and where its secret came from (no secret)."""
        config = self.config
        origin = f" from Secret {config.credentials_name!r}" if config.credentials_name else ""
        if config.client_secret:
            authority = f" at {config.authority_host}" if config.authority_host else ""
            return (f"the service principal (tenantId {config.tenant_id}, clientId {config.client_id}){origin}"
                    f"{authority}")
        client, tenant = os.environ.get("AZURE_CLIENT_ID"), os.environ.get("AZURE_TENANT_ID")
        return f"the pod's Azure workload identity (clientId {client}, tenantId {tenant}; no credentialsSecretRef)"

    @contextlib.contextmanager
    def _errors(self, operation: str, key: str | None) -> Iterator[None]:
        if self._interrupted is not None:
            raise StoreError(ErrorKind.PERMANENT, self._interrupted, "Stalled")
        if self._no_credentials is not None:
            raise StoreError(ErrorKind.PERMANENT, self._no_credentials, "AuthenticationFailed")
        try:
            yield
        except AzureError as error:
            raise self._error(operation, key, error) from error

    def _error(self, operation: str, key: str | None, error: AzureError) -> StoreError:
        where = self.describe(key)
        raw_code = getattr(error, "error_code", "") or ""
        code = str(getattr(raw_code, "value", raw_code))  # a StorageErrorCode (a str enum) or the header's text
        status = getattr(getattr(error, "response", None), "status_code", None)
        detail = (str(getattr(error, "reason", "") or "") or str(error).splitlines()[0])[:200]
        message = f"{operation} failed on {where}: {code or type(error).__name__}: {detail}"
        if isinstance(error, ClientAuthenticationError) and not code and self.config.uses_entra_id:
            # No storage error code: the token was refused before any request reached storage (a wrong client
            # secret, an unknown tenant or client, an untrusted federated token). Entra ID's AADSTS text says which.
            detail = str(error).strip().splitlines()[0][:400] if str(error).strip() else type(error).__name__
            return StoreError(ErrorKind.PERMANENT, f"{operation} failed on {where}: Entra ID gave no token to "
                                                   f"{self._signer()}: {detail}", "AuthenticationFailed")
        if isinstance(error, ResourceModifiedError) or status == 412 or code == "ConditionNotMet":
            return StoreError(ErrorKind.PRECONDITION, message, code or "412")
        if code in _PERMANENT_CODES or isinstance(error, ClientAuthenticationError) or status == 403:
            return StoreError(ErrorKind.PERMANENT, message, code or "403")
        # The SDK raises ResourceNotFoundError for a not-found error code whatever the status, and the service
        # answers CannotVerifyCopySource with a 500 when it could not read a copy's source in time: not a missing
        # object, a fault to retry.
        if status == 404 or (isinstance(error, ResourceNotFoundError) and status is None):
            return StoreError(ErrorKind.NOT_FOUND, message, code or "404")
        if isinstance(error, ServiceRequestError | ServiceResponseError) or (status and status >= 500) or status in (
                408, 429):
            return StoreError(ErrorKind.TRANSIENT, f"{message} (after retries)", code or str(status or ""))
        if isinstance(error, HttpResponseError):
            return StoreError(ErrorKind.OTHER, message, code or str(status or ""))
        return StoreError(ErrorKind.TRANSIENT, f"{message}: {error}", code)

    @staticmethod
    def _settings(attributes: ObjectAttributes, content_md5: bytes | None = None) -> ContentSettings:
        return ContentSettings(
            content_type=attributes.content_type, content_encoding=attributes.content_encoding,
            cache_control=attributes.cache_control, content_disposition=attributes.content_disposition,
            content_language=attributes.content_language, content_md5=content_md5,  # type: ignore[arg-type]
        )

    def _info(self, key: str, properties: Any, size: int, whole: bool = True) -> ObjectInfo:
        """The object's info from its properties, with its index tags (one Get Blob Tags, only if it has some, and
        not for a range: a range is one part of an object whose attributes its stat gave).

        The tier is in a stat's properties, not a read's: a read reports the default class, and the engine takes
        the class from the listing instead (ObjectSummary.storage_class).
        """
        settings = properties.content_settings
        user, expires = metadata_from_azure(properties.metadata or {})
        tags: dict[str, str] = {}
        if whole and getattr(properties, "tag_count", None):
            with self._errors("GetBlobTags", key):
                tags = dict(self.container.get_blob_client(key).get_blob_tags())
        tier = None if getattr(properties, "blob_tier_inferred", False) else getattr(properties, "blob_tier", None)
        attributes = ObjectAttributes(
            content_type=settings.content_type or None, content_encoding=settings.content_encoding or None,
            cache_control=settings.cache_control or None, content_disposition=settings.content_disposition or None,
            content_language=settings.content_language or None, expires=expires, user_metadata=user, tags=tags,
            storage_class=common_storage_class(str(tier) if tier else None, ACCESS_TIERS, DEFAULT_TIER),
        )
        # Content-MD5 describes the whole blob in a stat or a whole read; a range's response may carry the range's.
        md5 = settings.content_md5 if whole else None
        return ObjectInfo(key=key, size=size, etag=str(properties.etag).strip('"'), attributes=attributes,
                          etag_kind=EtagKind.OPAQUE, content_md5=bytes(md5).hex() if md5 else None)

    # -- ObjectStore --------------------------------------------------------------------------------------------

    def check_access(self) -> None:
        try:
            with self._errors("GetContainerProperties", None):
                self.container.get_container_properties()
        except StoreError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                raise StoreError(ErrorKind.PERMANENT, f"container does not exist: {self.describe()}",
                                 "ContainerNotFound") from error
            raise

    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        # List Blobs starts at a key with `start_from` (inclusive); a service or emulator that ignores it lists from
        # the prefix, so keys up to start_after are dropped here too, and pages are read until one has a key left.
        after = start_after if token is None else None
        kwargs: dict[str, Any] = {"start_from": after} if after else {}
        with self._errors("ListBlobs", prefix):
            pages = self.container.list_blobs(name_starts_with=prefix, results_per_page=self.config.list_page_size,
                                              **kwargs)
            pager = pages.by_page(continuation_token=token)
            while True:
                page: Any = next(pager, [])
                objects = [ObjectSummary(key=blob.name, size=int(blob.size), etag=str(blob.etag).strip('"'),
                                         last_modified=blob.last_modified,
                                         storage_class=common_storage_class(
                                             str(blob.blob_tier) if blob.blob_tier else None, ACCESS_TIERS,
                                             DEFAULT_TIER))
                           for blob in page if after is None or blob.name.encode() > after.encode()]
                next_token = pager.continuation_token or None  # type: ignore[attr-defined]
                if objects or next_token is None:
                    return ListPage(objects=objects, next_token=next_token)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors("GetBlobProperties", key):
                properties = self.container.get_blob_client(key).get_blob_properties()
        except StoreError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return self._info(key, properties, int(properties.size))

    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        # decompress=False: the bytes as stored (a gzip Content-Encoding is an attribute we carry, not undo).
        kwargs: dict[str, Any] = {"max_concurrency": 1, "decompress": False}
        if start is not None and end is not None:
            kwargs.update(offset=start, length=end - start + 1)
        if if_match:
            kwargs.update(etag=f'"{if_match}"', match_condition=MatchConditions.IfNotModified)
        with self._errors("GetBlob", key):
            downloader = self.container.get_blob_client(key).download_blob(**kwargs)
        properties = downloader.properties
        # A range's properties tell the range's size; the whole object's follows the slash of Content-Range.
        size = int(properties.size)
        content_range = getattr(properties, "content_range", None)
        if content_range and "/" in content_range and not content_range.endswith("*"):
            size = int(content_range.rsplit("/", 1)[1])
        info = self._info(key, properties, size, whole=start is None)
        return _AzureStream(iter(downloader.chunks()), self.describe(key), info)

    def _tier_and_tags(self, key: str, attributes: ObjectAttributes) -> dict[str, Any]:
        """The write arguments giving a blob the attributes' tier and index tags."""
        tier = native_storage_class(self, key, attributes.storage_class, ACCESS_TIERS)
        return {"standard_blob_tier": StandardBlobTier(tier) if tier else None, "tags": dict(attributes.tags) or None}

    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        tier_and_tags = self._tier_and_tags(key, attributes)
        # x-ms-blob-content-md5 on Put Blob is checked by the service against the body, and stored.
        with self._errors("PutBlob", key):
            self.container.get_blob_client(key).upload_blob(
                body, overwrite=True, content_settings=self._settings(attributes, base64.b64decode(content_md5)),
                metadata=metadata_to_azure(attributes), **tier_and_tags,
            )
        return ""  # Azure's ETags are opaque

    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        self._tier_and_tags(key, attributes)  # refused before any block is staged, not at the commit
        upload_id = f"{int(time.time()):010d}{secrets.token_hex(4)}"
        with self._errors("PutBlock (upload marker)", key):
            self.container.get_blob_client(key).stage_block(_block_id(upload_id, _MARKER_PART), b"\0")
        with self._lock:
            self._pending_attributes[upload_id] = attributes
        return OpenUpload(self.bucket, key, upload_id)

    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        block_id = _block_id(upload.upload_id, part_number)
        with self._errors(f"PutBlock {part_number}", upload.key):
            # The service checks the body against the Content-MD5 the engine computed while reading it (the SDK's
            # validate_content would hash the body again and check only our send, not what was read).
            self.container.get_blob_client(upload.key).stage_block(block_id, body, headers={"Content-MD5": content_md5})
        return block_id

    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        with self._lock:
            attributes = self._pending_attributes.get(upload.upload_id)
        if attributes is None:
            raise StoreError(ErrorKind.OTHER, f"upload {upload.upload_id} was not created by this process; it can "
                                              f"only be aborted: {self.describe(upload.key)}")
        blocks = [BlobBlock(block_id=block_id) for _, block_id in sorted(parts)]
        with self._errors("PutBlockList", upload.key):
            result = self.container.get_blob_client(upload.key).commit_block_list(
                blocks, content_settings=self._settings(attributes), metadata=metadata_to_azure(attributes),
                **self._tier_and_tags(upload.key, attributes),
            )
        with self._lock:
            self._pending_attributes.pop(upload.upload_id, None)
        return str(result.get("etag", "")).strip('"')

    def abort_upload(self, upload: OpenUpload) -> None:
        with self._lock:
            self._pending_attributes.pop(upload.upload_id, None)
        if upload not in list(self.list_uploads(upload.key)):
            return  # already gone: committed, aborted, or discarded by Azure
        blob = self.container.get_blob_client(upload.key)
        try:
            # Only if no blob is committed on the key (If-None-Match: *): Put Blob discards every uncommitted block.
            with self._errors("PutBlob (discard uncommitted blocks)", upload.key):
                placeholder = blob.upload_blob(b"", overwrite=False)
        except StoreError as error:
            if error.code != "BlobAlreadyExists" and error.kind is not ErrorKind.PRECONDITION:
                raise
            if self.stat(upload.key) is not None:
                message = (f"upload {upload.upload_id} cannot be discarded now: a committed blob exists on "
                           f"{self.describe(upload.key)}, and Azure deletes uncommitted blocks only at the blob's "
                           "next commit or after seven days; readers see the committed blob unchanged")
                raise StoreError(ErrorKind.OTHER, message, "UncommittedBlocksKept") from error
            # Some services (Azurite) count uncommitted blocks as a blob for If-None-Match; none is committed, so
            # the placeholder replaces nothing but those blocks. The window between the stat and this write is the
            # one race left: a blob another writer commits inside it is replaced, then deleted below.
            with self._errors("PutBlob (discard uncommitted blocks)", upload.key):
                placeholder = blob.upload_blob(b"", overwrite=True)
        with self._errors("DeleteBlob (placeholder)", upload.key), contextlib.suppress(ResourceNotFoundError,
                                                                                       ResourceModifiedError):
            blob.delete_blob(etag=placeholder["etag"], match_condition=MatchConditions.IfNotModified)

    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        try:
            with self._errors("GetBlockList", key):
                _, uncommitted = self.container.get_blob_client(key).get_block_list("uncommitted")
        except StoreError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return
            raise
        found: dict[str, dt.datetime] = {}
        for block in uncommitted:
            parsed = _parse_block_id(str(block.id))
            if parsed is not None:
                found.setdefault(parsed[0], parsed[2])
        for upload_id, initiated in sorted(found.items()):
            yield OpenUpload(self.bucket, key, upload_id, initiated)

    def delete(self, key: str) -> None:
        with self._errors("DeleteBlob", key), contextlib.suppress(ResourceNotFoundError):
            self.container.get_blob_client(key).delete_blob()

    def interrupt(self, reason: str) -> None:
        self._interrupted = reason

    # -- ServerSideCopy -----------------------------------------------------------------------------------------

    def can_copy_from(self, source: ObjectStore) -> bool:
        # Any Azure source whose credentials can make (or are) a read SAS; the service fetches from its URL. A source
        # signed in with Entra ID makes a user delegation SAS (it needs its account name to sign one).
        if not isinstance(source, AzureBlobStore):
            return False
        config = source.config
        return bool(config.account_key or config.sas_token or (config.uses_entra_id and config.account_name))

    def user_delegation_key(self) -> UserDelegationKey:
        """A key to sign read SAS with, from Get User Delegation Key (Entra ID sign-in only), kept while valid."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            kept = self._delegation_key
        if kept is not None and kept[1] - now >= COPY_SAS_LIFETIME:
            return kept[0]
        expiry = now + DELEGATION_KEY_LIFETIME
        with self._errors("GetUserDelegationKey", None):
            # Started a little in the past: the service's clock and this one may disagree by minutes.
            key = self.service.get_user_delegation_key(now - dt.timedelta(minutes=5), expiry)
        with self._lock:
            self._delegation_key = (key, expiry)
        return key

    def _source_url(self, source: ObjectStore, source_key: str) -> str:
        assert isinstance(source, AzureBlobStore)
        blob = source.container.get_blob_client(source_key)
        expiry = dt.datetime.now(dt.UTC) + COPY_SAS_LIFETIME
        if source.config.account_key:
            sas = generate_blob_sas(
                source.config.account_name or "", source.bucket, source_key, account_key=source.config.account_key,
                permission=BlobSasPermissions(read=True), expiry=expiry,
            )
        elif source.config.sas_token:
            sas = source.config.sas_token.lstrip("?")
        else:
            sas = generate_blob_sas(
                source.config.account_name or "", source.bucket, source_key,
                user_delegation_key=source.user_delegation_key(), permission=BlobSasPermissions(read=True),
                expiry=expiry,
            )
        return f"{blob.url}?{sas}"

    def copy_object(
        self, source: ObjectStore, source_key: str, key: str, if_match: str, storage_class: str | None = None,
        between_requests: BetweenRequests | None = None,
    ) -> str:
        tags: dict[str, str] = {}
        if isinstance(source, AzureBlobStore):
            info = source.stat(source_key)
            if info is not None and info.size > MAX_SYNC_COPY:
                raise StoreError(ErrorKind.OTHER, f"Copy Blob From URL takes at most 256 MiB; {source_key!r} has "
                                                  f"{info.size} bytes (lower the multipart threshold to copy it in "
                                                  f"parts): {self.describe(key)}", "CopySourceTooLarge")
            # Index tags are not copied with the blob: they are set on the copy from the source's (pinned by ETag).
            tags = dict(info.attributes.tags) if info is not None else {}
        tier_and_tags = self._tier_and_tags(key, ObjectAttributes(tags=tags, storage_class=storage_class))
        with self._errors(f"CopyBlobFromURL from {source.bucket}/{source_key!r}", key):
            result = self.container.get_blob_client(key).start_copy_from_url(
                self._source_url(source, source_key), requires_sync=True, source_etag=f'"{if_match}"',
                source_match_condition=MatchConditions.IfNotModified, **tier_and_tags,
            )
        return str(result.get("etag", "")).strip('"')

    def copy_part(
        self, source: ObjectStore, source_key: str, upload: OpenUpload, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        # Put Block From URL takes no source condition through the SDK: the source's ETag is read before and after
        # the block is staged, and since every write of a blob changes its ETag, equal ETags pin the bytes copied.
        def pinned() -> None:
            now = source.stat(source_key)
            if now is None or now.etag != if_match:
                raise StoreError(ErrorKind.PRECONDITION, f"the source changed while being copied: "
                                                         f"{source.describe(source_key)}", "ConditionNotMet")

        pinned()
        block_id = _block_id(upload.upload_id, part_number)
        with self._errors(f"PutBlockFromURL {part_number}", upload.key):
            self.container.get_blob_client(upload.key).stage_block_from_url(
                block_id, self._source_url(source, source_key), source_offset=start, source_length=end - start + 1,
            )
        pinned()
        return block_id
