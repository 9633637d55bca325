"""spec.throttle in the engine: a byte and request budget per worker that can change while the migration runs.

Both limits are token buckets that may go into debt: a request (or a read of n bytes) waits only while the bucket is
in debt, then takes what it needs, so a 16 MiB part is never refused for being larger than a second's budget and
the long-run rate is exactly the limit. Written here rather than taken from a rate-limiting library because the
waits must wake on abort (abort latency stays bounded by a checkpoint, however low the limit) and the rates must
change live (the worker follows spec.throttle), which the libraries we looked at do not combine.

`ThrottledStore` puts a store behind the budget without the engine or the backend knowing: every request takes a
request token, and every byte read takes a byte token. Only reads count bytes: a streamed copy writes what it read,
so counting both would halve the rate; a server-side copy's bytes never pass through the worker (its requests count).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from datamover.backends.base import (
    BetweenRequests,
    ByteStream,
    ListPage,
    ObjectAttributes,
    ObjectInfo,
    ObjectStore,
    OpenUpload,
    ServerSideCopy,
)
from datamover.engine.abort import AbortSignal

# Longest single sleep while in debt: a raised or lifted limit, or an abort, is noticed within this.
WAIT_SLICE = 0.25


class _Bucket:
    def __init__(self, now: float) -> None:
        self.rate: float | None = None  # units per second; None = no limit
        self.tokens = 0.0
        self.at = now

    def refill(self, now: float) -> None:
        if self.rate is not None:
            # At most one second's worth saved up: an idle worker does not earn a burst of minutes.
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now


class Throttle:
    """A worker's budget: `bytes_per_second` read and `requests_per_second` sent (None: unlimited); thread-safe."""

    def __init__(self, bytes_per_second: float | None = None, requests_per_second: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._bytes, self._requests = _Bucket(clock()), _Bucket(clock())
        self.waited = 0.0  # seconds spent waiting, summed over threads (what the limit cost)
        self.set(bytes_per_second, requests_per_second)

    def set(self, bytes_per_second: float | None, requests_per_second: float | None) -> None:
        """Change the limits now; waits in progress follow the new ones within WAIT_SLICE."""
        with self._lock:
            now = self._clock()
            for bucket, rate in ((self._bytes, bytes_per_second), (self._requests, requests_per_second)):
                bucket.refill(now)
                if rate is None or rate <= 0:
                    bucket.rate, bucket.tokens = None, 0.0
                else:
                    bucket.rate = float(rate)
            self._lock.notify_all()

    @property
    def limits(self) -> tuple[float | None, float | None]:
        with self._lock:
            return self._bytes.rate, self._requests.rate

    def take_bytes(self, n: int, abort: AbortSignal) -> None:
        self._take(self._bytes, n, abort)

    def take_request(self, abort: AbortSignal) -> None:
        self._take(self._requests, 1, abort)

    def _take(self, bucket: _Bucket, n: float, abort: AbortSignal) -> None:
        started = None
        with self._lock:
            while True:
                bucket.refill(self._clock())
                if bucket.rate is None:
                    break
                if bucket.tokens >= 0 or abort.requested:
                    bucket.tokens -= n
                    break
                if started is None:
                    started = self._clock()
                # At least a millisecond: a debt of a few float ulps must not spin.
                self._pause(max(0.001, min(WAIT_SLICE, -bucket.tokens / bucket.rate)))
            if started is not None:
                self.waited += self._clock() - started

    def _pause(self, seconds: float) -> None:
        """Wait (the lock held by the caller is released meanwhile); a change of limits wakes it."""
        self._lock.wait(seconds)


class _ThrottledStream(ByteStream):
    def __init__(self, stream: ByteStream, throttle: Throttle, abort: AbortSignal) -> None:
        self._stream, self._throttle, self._abort = stream, throttle, abort
        self.info = stream.info

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self._throttle.take_bytes(len(data), self._abort)
        return data

    def close(self) -> None:
        self._stream.close()


class ThrottledStore(ObjectStore):
    """`store` with every request and every byte read taken from `throttle` first."""

    def __init__(self, store: ObjectStore, throttle: Throttle, abort: AbortSignal) -> None:
        self.inner, self._throttle, self._abort = store, throttle, abort
        self.bucket, self.prefix, self.capabilities = store.bucket, store.prefix, store.capabilities

    def _request(self) -> None:
        self._throttle.take_request(self._abort)

    def describe(self, key: str | None = None) -> str:
        return self.inner.describe(key)

    def check_access(self) -> None:
        self._request()
        self.inner.check_access()

    def list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> ListPage:
        self._request()
        return self.inner.list_page(prefix, token, start_after)

    def stat(self, key: str) -> ObjectInfo | None:
        self._request()
        return self.inner.stat(key)

    def open_read(self, key: str, start: int | None, end: int | None, if_match: str | None) -> ByteStream:
        self._request()
        return _ThrottledStream(self.inner.open_read(key, start, end, if_match), self._throttle, self._abort)

    def put(self, key: str, body: bytes, attributes: ObjectAttributes, content_md5: str) -> str:
        self._request()
        return self.inner.put(key, body, attributes, content_md5)

    def create_upload(self, key: str, attributes: ObjectAttributes) -> OpenUpload:
        self._request()
        return self.inner.create_upload(key, attributes)

    def upload_part(self, upload: OpenUpload, part_number: int, body: bytes, content_md5: str) -> str:
        self._request()
        return self.inner.upload_part(upload, part_number, body, content_md5)

    def complete_upload(self, upload: OpenUpload, parts: Sequence[tuple[int, str]]) -> str:
        self._request()
        return self.inner.complete_upload(upload, parts)

    def abort_upload(self, upload: OpenUpload) -> None:
        # Never held back: cleaning up is what an abort waits for.
        self.inner.abort_upload(upload)

    def list_uploads(self, key: str) -> Iterator[OpenUpload]:
        self._request()
        return self.inner.list_uploads(key)

    def delete(self, key: str) -> None:
        self._request()
        self.inner.delete(key)

    def first_part_size(self, key: str) -> int | None:
        self._request()
        return self.inner.first_part_size(key)

    def stored_as_configured(self, info: ObjectInfo) -> bool:
        return self.inner.stored_as_configured(info)

    def stalled_for(self) -> float:
        return self.inner.stalled_for()

    def interrupt(self, reason: str) -> None:
        self.inner.interrupt(reason)


class ThrottledCopier(ServerSideCopy):
    """A server-side copier whose requests take request tokens (its bytes never pass through the worker)."""

    def __init__(self, copier: ServerSideCopy, throttle: Throttle, abort: AbortSignal) -> None:
        self._copier, self._throttle, self._abort = copier, throttle, abort

    def can_copy_from(self, source: ObjectStore) -> bool:
        return self._copier.can_copy_from(source.inner if isinstance(source, ThrottledStore) else source)

    def copy_object(
        self, source: ObjectStore, source_key: str, key: str, if_match: str, storage_class: str | None = None,
        between_requests: BetweenRequests | None = None,
    ) -> str:
        self._throttle.take_request(self._abort)

        def next_request() -> None:  # every further request of the copy takes its token too
            if between_requests is not None:
                between_requests()
            self._throttle.take_request(self._abort)

        return self._copier.copy_object(unwrapped(source), source_key, key, if_match, storage_class, next_request)

    @property
    def copies_parts(self) -> bool:  # type: ignore[override]
        return self._copier.copies_parts

    def copy_part(
        self, source: ObjectStore, source_key: str, upload: OpenUpload, part_number: int, start: int, end: int,
        if_match: str,
    ) -> str:
        self._throttle.take_request(self._abort)
        return self._copier.copy_part(unwrapped(source), source_key, upload, part_number, start, end, if_match)


def unwrapped(store: ObjectStore) -> ObjectStore:
    """The store behind a ThrottledStore (what a server-side copy talks to), or the store itself."""
    return store.inner if isinstance(store, ThrottledStore) else store
