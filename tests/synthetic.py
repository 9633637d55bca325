"""A store behind the engine's seam that synthesizes its objects: a million-key source costs no disk and no fill time.

Used by the unit tests of shared listing and by bench/listing_memory.py for the 1M-key figures. Keys are
`<prefix>k<index, 8 digits>`, so they are in key order by construction and a listing after any key is a bisection;
each object's body is its key's bytes. Writes are checked (Content-MD5) and then only counted, so the destination
holds nothing but a counter and whatever keys a test asks it to keep. Requests are counted by kind.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence

from datamover.backends.base import (
    ByteStream,
    ErrorKind,
    EtagKind,
    ListPage,
    ObjectAttributes,
    ObjectInfo,
    ObjectStore,
    ObjectSummary,
    OpenUpload,
    StoreError,
)


class _Keys(Sequence[str]):
    """The virtual sorted key list: no per-key memory."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < self.count:
            raise IndexError(index)
        return f"{self.prefix}k{index:08d}"


class _Body(ByteStream):
    def __init__(self, body: bytes, info: ObjectInfo) -> None:
        self._body, self._offset, self.info = body, 0, info

    def read(self, size: int) -> bytes:
        chunk = self._body[self._offset:self._offset + size]
        self._offset += len(chunk)
        return chunk

    def close(self) -> None:
        return None


class SyntheticStore(ObjectStore):
    """`count` synthetic objects under `prefix` (a source), or none (a destination that counts what it is given)."""

    def __init__(self, bucket: str, prefix: str = "", count: int = 0, page_size: int = 1000) -> None:
        self.bucket, self.prefix, self.page_size = bucket, prefix, page_size
        self._keys = _Keys(prefix, count)
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.deleted: set[str] = set()  # keys a move removed (a test's move of a few thousand keys at most)
        self.written: set[str] = set()  # keys written, only if keep_written (tests); else only counted
        self.keep_written = False

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def _index(self, key: str) -> int | None:
        if not key.startswith(self.prefix + "k"):
            return None
        digits = key[len(self.prefix) + 1:]
        if len(digits) != 8 or not digits.isdigit() or int(digits) >= len(self._keys):
            return None
        return int(digits)

    def _summary(self, key: str) -> ObjectSummary:
        body = key.encode()
        return ObjectSummary(key=key, size=len(body), etag=hashlib.md5(body).hexdigest())

    def describe(self, key: str | None = None) -> str:
        return f"synthetic bucket {self.bucket}" + (f" key {key!r}" if key else "")

    def check_access(self) -> None:
        self._count("HeadBucket")

    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        self._count("ListObjectsV2")
        after = token if token is not None else (start_after or "")
        # bisect_right over the virtual list: the first key sorting after `after`
        low, high = 0, len(self._keys)
        while low < high:
            middle = (low + high) // 2
            if self._keys[middle] <= after:
                low = middle + 1
            else:
                high = middle
        objects: list[ObjectSummary] = []
        index = low
        while index < len(self._keys) and len(objects) < self.page_size:
            key = self._keys[index]
            index += 1
            if key.startswith(prefix) and key not in self.deleted:
                objects.append(self._summary(key))
        more = index < len(self._keys)
        return ListPage(objects=objects, next_token=objects[-1].key if more and objects else None)

    def _info(self, key: str) -> ObjectInfo | None:
        if self._index(key) is None or key in self.deleted:
            return None
        summary = self._summary(key)
        return ObjectInfo(key, summary.size, summary.etag, ObjectAttributes(), EtagKind.MD5)

    def stat(self, key: str) -> ObjectInfo | None:
        self._count("HeadObject")
        return self._info(key)

    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        self._count("GetObject")
        info = self._info(key)
        if info is None:
            raise StoreError(ErrorKind.NOT_FOUND, f"no such key: {self.describe(key)}")
        body = key.encode()
        if start is not None and end is not None:
            body = body[start:end + 1]
        return _Body(body, info)

    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        self._count("PutObject")
        digest = hashlib.md5(body).digest()
        if base64.b64encode(digest).decode() != content_md5:
            raise StoreError(ErrorKind.OTHER, f"BadDigest on {self.describe(key)}")
        if self.keep_written:
            with self._lock:
                self.written.add(key)
        return digest.hex()

    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        raise NotImplementedError("synthetic objects are small: never written in parts")

    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        raise NotImplementedError

    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        raise NotImplementedError

    def abort_upload(self, upload: OpenUpload) -> None:
        raise NotImplementedError

    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        self._count("ListMultipartUploads")
        return iter(())

    def delete(self, key: str) -> None:
        self._count("DeleteObject")
        with self._lock:
            self.deleted.add(key)
