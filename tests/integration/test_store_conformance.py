"""The store conformance suite (tests/store_conformance.py) for the S3 backend on a real MinIO server."""

from __future__ import annotations

import pytest

from datamover.backends import open_store
from datamover.backends.base import ObjectStore
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server
from tests.integration.test_engine_minio import config
from tests.store_conformance import StoreConformance, StoreFactory


class TestS3OnMinio(StoreConformance):
    @pytest.fixture
    def make_store(self, cloud_a: S3Server, bucket_factory: BucketFactory) -> StoreFactory:
        def make(page_size: int = 1000) -> ObjectStore:
            # A key prefix, as a MigrationJob's location has: the seam takes full keys, prefix included.
            return open_store(config(cloud_a, bucket_factory(cloud_a), "pre/", list_page_size=page_size))

        return make

    # A finding of this suite, left for its own change (this one changes no behaviour): a server-side copy on MinIO
    # is not exact, and skip-identical then copies such an object again on every run. Strict: a fix must drop it.
    @pytest.mark.xfail(strict=True, reason="MinIO's CopyObject (MetadataDirective=COPY) drops the Expires header")
    def test_a_server_side_copy_carries_exactly_the_attributes(self, make_store: StoreFactory) -> None:
        super().test_a_server_side_copy_carries_exactly_the_attributes(make_store)
