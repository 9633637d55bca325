"""The conformance suite of the store seam (datamover/backends/base.py): what the engine relies on from every backend.

A backend joins by subclassing `StoreConformance` in a test module of its tier and defining one fixture,
`make_store`: a factory that returns a store on a fresh, empty bucket each call, every store of one factory on the
same service with the same credentials (so a store that can copy server-side can copy between two of them). A test
double that does not enforce a rule (moto) marks that test strict-xfail, so the day it does, the mark must go.
tests/unit/test_store_conformance.py runs it for S3 on moto, tests/integration/test_store_conformance.py for S3 on
MinIO. The suite asserts behaviour through the seam only, and checks that what a store declares (capabilities,
optional interfaces) is what it does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from collections.abc import Callable

import pytest

from datamover.backends.base import (
    ErrorKind,
    EtagKind,
    ObjectAttributes,
    ObjectStore,
    OpenUpload,
    ServerSideCopy,
    StoreError,
    server_side_copier,
)

StoreFactory = Callable[..., ObjectStore]  # make_store(page_size: int = 1000) -> a store on a fresh bucket

ATTRIBUTES = ObjectAttributes(
    content_type="text/csv", content_encoding="gzip", cache_control="max-age=60",
    content_disposition='attachment; filename="r.csv"', content_language="fr",
    expires="Wed, 21 Oct 2037 07:28:00 GMT", user_metadata={"owner": "ops", "k-2": "v 2"},
)
# Keys whose order and spelling trip stores up: spaces, non-ASCII, "-" and "/" (which sort apart by byte), folders.
AWKWARD_KEYS = ["plain.txt", "with space.txt", "ünïcødé/файл.bin", "a-b", "a/b", "dir/", "dir/a", "Z", "~"]


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def read_all(store: ObjectStore, key: str, start: int | None = None, end: int | None = None,
             if_match: str | None = None) -> bytes:
    stream = store.open_read(key, start, end, if_match)
    try:
        chunks = []
        while chunk := stream.read(64 * 1024):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


def put(store: ObjectStore, key: str, body: bytes, attributes: ObjectAttributes = ATTRIBUTES) -> str:
    return store.put(store.prefix + key, body, attributes, md5_b64(body))


def write_in_parts(store: ObjectStore, key: str, parts: list[bytes]) -> tuple[OpenUpload, str]:
    upload = store.create_upload(key, ATTRIBUTES)
    etags = [(number, store.upload_part(upload, number, body, md5_b64(body)))
             for number, body in enumerate(parts, start=1)]
    return upload, store.complete_upload(upload, etags)


class StoreConformance:
    """Every backend passes these; a subclass provides `make_store`."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError("a backend's test module defines make_store")

    def test_a_whole_object_round_trips_with_its_attributes(self, make_store: StoreFactory) -> None:
        store = make_store()
        body = os.urandom(3000)
        returned = put(store, "k", body)
        info = store.stat(store.prefix + "k")
        assert info is not None and info.size == len(body)
        assert info.attributes == ATTRIBUTES
        assert read_all(store, store.prefix + "k") == body
        assert returned in ("", hashlib.md5(body).hexdigest()), "put returns the content MD5 or nothing"
        if info.etag_kind is EtagKind.MD5:
            assert info.etag == hashlib.md5(body).hexdigest(), "an ETag declared MD5 must be the content's MD5"
        if info.content_md5 is not None:
            assert info.content_md5 == hashlib.md5(body).hexdigest(), "a stated content MD5 must be the content's"
        stream = store.open_read(store.prefix + "k", 0, 99, None)
        try:
            assert stream.info.content_md5 in (None, info.content_md5), "a range never states its own MD5 as whole"
        finally:
            stream.close()

    def test_an_empty_object_round_trips(self, make_store: StoreFactory) -> None:
        store = make_store()
        put(store, "empty", b"", ObjectAttributes())
        info = store.stat(store.prefix + "empty")
        assert info is not None and info.size == 0 and read_all(store, store.prefix + "empty") == b""

    def test_a_body_that_does_not_match_its_md5_is_refused(self, make_store: StoreFactory) -> None:
        store = make_store()
        with pytest.raises(StoreError):
            store.put(store.prefix + "k", b"what was sent", ObjectAttributes(), md5_b64(b"what was hashed"))
        assert store.stat(store.prefix + "k") is None

    def test_a_part_that_does_not_match_its_md5_is_refused(self, make_store: StoreFactory) -> None:
        store = make_store()
        key = store.prefix + "k"
        upload = store.create_upload(key, ObjectAttributes())
        try:
            with pytest.raises(StoreError):
                store.upload_part(upload, 1, b"what was sent", md5_b64(b"what was hashed"))
        finally:
            store.abort_upload(upload)
        assert store.stat(key) is None

    def test_ranges_read_exactly_their_bytes_and_tell_the_whole_size(self, make_store: StoreFactory) -> None:
        store = make_store()
        body = os.urandom(10_000)
        put(store, "k", body)
        for start, end in [(0, 0), (0, 4095), (4096, 9999), (9999, 9999), (17, 8191)]:
            stream = store.open_read(store.prefix + "k", start, end, None)
            try:
                assert stream.info.size == len(body), "a range's info describes the whole object"
            finally:
                stream.close()
            assert read_all(store, store.prefix + "k", start, end) == body[start:end + 1]

    def test_a_read_pinned_to_another_version_fails_as_a_precondition(self, make_store: StoreFactory) -> None:
        store = make_store()
        put(store, "k", b"first")
        info = store.stat(store.prefix + "k")
        assert info is not None
        assert read_all(store, store.prefix + "k", if_match=info.etag) == b"first"
        put(store, "k", b"second")
        with pytest.raises(StoreError) as raised:
            read_all(store, store.prefix + "k", if_match=info.etag)
        assert raised.value.kind is ErrorKind.PRECONDITION

    def test_a_missing_key_is_none_to_stat_not_found_to_read_and_fine_to_delete(
        self, make_store: StoreFactory,
    ) -> None:
        store = make_store()
        assert store.stat(store.prefix + "missing") is None
        with pytest.raises(StoreError) as raised:
            read_all(store, store.prefix + "missing")
        assert raised.value.kind is ErrorKind.NOT_FOUND
        assert "missing" in raised.value.message, "errors name the key"
        store.delete(store.prefix + "missing")
        put(store, "k", b"x")
        store.delete(store.prefix + "k")
        assert store.stat(store.prefix + "k") is None

    def test_listing_is_in_utf8_byte_order_page_by_page_under_the_prefix(self, make_store: StoreFactory) -> None:
        store = make_store(page_size=3)
        for key in AWKWARD_KEYS:
            put(store, "in/" + key, key.encode(), ObjectAttributes())
        put(store, "other", b"outside the prefix", ObjectAttributes())
        listed, token, pages = [], None, 0
        while True:
            page = store.list_page(store.prefix + "in/", token)
            assert len(page.objects) <= 3
            listed += page.objects
            pages += 1
            if page.next_token is None:
                break
            token = page.next_token
        expected = sorted((store.prefix + "in/" + key for key in AWKWARD_KEYS), key=lambda k: k.encode())
        assert [item.key for item in listed] == expected
        assert pages >= 3
        assert all(item.size == len(item.key.split("in/", 1)[1].encode()) for item in listed)
        stat = store.stat(listed[0].key)
        assert stat is not None and listed[0].etag == stat.etag, "listing and stat agree on the ETag"

    def test_listing_starts_after_any_key_and_continues_from_there(self, make_store: StoreFactory) -> None:
        # What one listing per job stands on (engine.shards): a page starting after the cursor, a key that need not
        # exist, and its continuation.
        store = make_store(page_size=3)
        for key in AWKWARD_KEYS:
            put(store, "in/" + key, key.encode(), ObjectAttributes())
        expected = sorted((store.prefix + "in/" + key for key in AWKWARD_KEYS), key=lambda k: k.encode())
        for cursor in (expected[0], expected[2], expected[1] + "0", expected[-1]):
            listed, token = [], None
            while True:
                page = store.list_page(store.prefix + "in/", token, start_after=cursor)
                listed += [item.key for item in page.objects]
                if page.next_token is None:
                    break
                token = page.next_token
            assert listed == [key for key in expected if key.encode() > cursor.encode()], cursor

    def test_an_object_written_in_parts_reads_back_whole(self, make_store: StoreFactory) -> None:
        store = make_store()
        limits = store.capabilities.limits
        parts = [os.urandom(limits.min_part_size), os.urandom(limits.min_part_size), b"tail"]
        key = store.prefix + "big"
        upload, etag = write_in_parts(store, key, parts)
        assert upload.key == key and upload.bucket == store.bucket
        info = store.stat(key)
        assert info is not None and info.size == sum(map(len, parts)) and info.etag == etag
        assert info.attributes == ATTRIBUTES, "attributes given at create_upload reach the object"
        assert read_all(store, key) == b"".join(parts)
        assert list(store.list_uploads(key)) == [], "a completed upload is no longer open"
        if info.etag_kind is EtagKind.MULTIPART_MD5:
            digests = b"".join(hashlib.md5(part).digest() for part in parts)
            assert etag == f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"
        if store.capabilities.part_layout:
            assert store.first_part_size(key) == limits.min_part_size
        else:
            assert store.first_part_size(key) is None

    def test_an_aborted_upload_leaves_nothing_listed_and_no_object(self, make_store: StoreFactory) -> None:
        store = make_store()
        key = store.prefix + "dir/k"
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        upload = store.create_upload(key, ObjectAttributes())
        store.upload_part(upload, 1, b"x" * 1024, md5_b64(b"x" * 1024))
        [listed] = store.list_uploads(key)
        assert listed == upload
        assert listed.initiated is not None and listed.initiated.tzinfo is not None
        assert listed.initiated >= before - dt.timedelta(minutes=5), "initiated is the store's clock, near ours"
        store.abort_upload(upload)
        assert list(store.list_uploads(key)) == []
        assert store.stat(key) is None
        try:
            store.abort_upload(upload)  # already gone: closed either way, never another kind of error
        except StoreError as error:
            assert error.kind is ErrorKind.NOT_FOUND, error.message

    def test_open_uploads_are_listed_for_exactly_the_key_asked(self, make_store: StoreFactory) -> None:
        store = make_store()
        mine = [store.create_upload(store.prefix + "dir/k", ObjectAttributes()) for _ in range(2)]
        others = [store.create_upload(store.prefix + key, ObjectAttributes()) for key in ("dir/k2", "dir/k/x", "k")]
        try:
            listed = list(store.list_uploads(store.prefix + "dir/k"))
            assert sorted(u.upload_id for u in listed) == sorted(u.upload_id for u in mine)
            assert list(store.list_uploads(store.prefix + "dir/none")) == []
        finally:
            for upload in mine + others:
                store.abort_upload(upload)

    def test_declared_limits_are_sane(self, make_store: StoreFactory) -> None:
        limits = make_store().capabilities.limits
        assert 0 < limits.min_part_size <= limits.max_part_size
        assert limits.max_parts >= 1 and limits.max_single_write >= limits.min_part_size

    def test_server_side_copy_is_declared_exactly_when_it_works(self, make_store: StoreFactory) -> None:
        source, destination = make_store(), make_store()
        body = os.urandom(2 * source.capabilities.limits.min_part_size + 10)
        put(source, "k", body)
        info = source.stat(source.prefix + "k")
        assert info is not None
        copier = server_side_copier(destination, source)
        if not isinstance(destination, ServerSideCopy):
            assert copier is None, "only a store declaring ServerSideCopy is asked to copy"
            return
        assert copier is destination, "two stores of one service with the same credentials copy server-side"
        copier.copy_object(source, info.key, destination.prefix + "whole", info.etag)
        assert read_all(destination, destination.prefix + "whole") == body
        if not copier.copies_parts:
            # Whole copies only (GCS rewrite): then any object (up to 5 TiB, the largest S3 and GCS hold) is copied
            # whole, and the engine never asks for a part.
            assert destination.capabilities.limits.single_copy_limit >= 5 * 1024 ** 4
            upload = destination.create_upload(destination.prefix + "parts", ATTRIBUTES)
            with pytest.raises(StoreError):
                copier.copy_part(source, info.key, upload, 1, 0, 9, info.etag)
            destination.abort_upload(upload)
            return
        upload = destination.create_upload(destination.prefix + "parts", ATTRIBUTES)
        half = source.capabilities.limits.min_part_size
        etags = [(1, copier.copy_part(source, info.key, upload, 1, 0, half - 1, info.etag)),
                 (2, copier.copy_part(source, info.key, upload, 2, half, len(body) - 1, info.etag))]
        destination.complete_upload(upload, etags)
        assert read_all(destination, destination.prefix + "parts") == body

    def test_a_server_side_copy_pinned_to_another_version_fails_as_a_precondition(
        self, make_store: StoreFactory,
    ) -> None:
        source, destination = make_store(), make_store()
        put(source, "k", b"first")
        copier = server_side_copier(destination, source)
        if copier is None:
            assert not isinstance(destination, ServerSideCopy) or not destination.can_copy_from(source)
            return
        with pytest.raises(StoreError) as raised:
            copier.copy_object(source, source.prefix + "k", destination.prefix + "stale", hashlib.md5(b"x").hexdigest())
        assert raised.value.kind is ErrorKind.PRECONDITION
        assert destination.stat(destination.prefix + "stale") is None

    def test_a_server_side_copy_carries_exactly_the_attributes(self, make_store: StoreFactory) -> None:
        source, destination = make_store(), make_store()
        put(source, "k", b"with headers")
        info = source.stat(source.prefix + "k")
        copier = server_side_copier(destination, source)
        assert info is not None
        if copier is None:
            assert not isinstance(destination, ServerSideCopy) or not destination.can_copy_from(source)
            return
        copier.copy_object(source, info.key, destination.prefix + "k", info.etag)
        copied = destination.stat(destination.prefix + "k")
        assert copied is not None and copied.attributes == ATTRIBUTES
