"""The store conformance suite (tests/store_conformance.py) for Azure Blob on Azurite and GCS on fake-gcs-server."""

from __future__ import annotations

import hashlib
import os

import pytest

from datamover.backends import open_store
from datamover.backends.azure_blob import AzureBlobConfig
from datamover.backends.base import ObjectAttributes, ObjectStore, StoreError
from datamover.backends.gcs import COMPOSE_LIMIT, GcsConfig
from tests.ground.clouds import AzuriteServer, FakeGcsServer
from tests.ground.plugin_clouds import ContainerFactory
from tests.store_conformance import ATTRIBUTES, StoreConformance, StoreFactory, md5_b64, write_in_parts


def azure_config(server: AzuriteServer, container: str, prefix: str = "", **overrides: object) -> AzureBlobConfig:
    fields: dict[str, object] = {"container": container, "account_url": server.endpoint, "prefix": prefix,
                                 "account_name": server.account, "account_key": server.key, **overrides}
    return AzureBlobConfig(**fields)  # type: ignore[arg-type]


class TestAzureBlobOnAzurite(StoreConformance):
    @pytest.fixture
    def make_store(self, azurite: AzuriteServer, azure_container: ContainerFactory) -> StoreFactory:
        def make(page_size: int = 1000) -> ObjectStore:
            return open_store(azure_config(azurite, azure_container(), "pre/", list_page_size=page_size))

        return make


def gcs_config(server: FakeGcsServer, bucket: str, prefix: str = "", **overrides: object) -> GcsConfig:
    return GcsConfig(bucket=bucket, prefix=prefix, endpoint=server.endpoint, project=server.project,
                     anonymous=True, **overrides)  # type: ignore[arg-type]


class TestGcsOnFakeGcsServer(StoreConformance):
    @pytest.fixture
    def make_store(self, fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory) -> StoreFactory:
        def make(page_size: int = 1000) -> ObjectStore:
            return open_store(gcs_config(fake_gcs, gcs_bucket(), "pre/", list_page_size=page_size))

        return make


# What each backend does beyond the suite, judged through the vendor SDK (not the backend under test).


def test_gcs_composes_more_parts_than_one_compose_takes(fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory) -> None:
    bucket = gcs_bucket()
    store = open_store(gcs_config(fake_gcs, bucket, "p/"))
    parts = [os.urandom(100 + number) for number in range(COMPOSE_LIMIT + 5)]  # two compose levels
    upload, _ = write_in_parts(store, "p/many", parts)
    client = fake_gcs.client()
    assert client.bucket(bucket).blob("p/many").download_as_bytes(raw_download=True) == b"".join(parts)
    assert [blob.name for blob in client.list_blobs(bucket)] == ["p/many"], "no part, level or marker is left"
    assert upload.upload_id not in {u.upload_id for u in store.list_uploads("p/many")}


def test_gcs_an_upload_is_a_folder_the_vendor_sdk_sees_until_aborted(
    fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory,
) -> None:
    bucket = gcs_bucket()
    store = open_store(gcs_config(fake_gcs, bucket, "p/"))
    store.put("p/kept", b"an object", ObjectAttributes(), md5_b64(b"an object"))
    upload = store.create_upload("p/k", ATTRIBUTES)
    store.upload_part(upload, 1, b"x" * 1000, md5_b64(b"x" * 1000))
    names = [blob.name for blob in fake_gcs.client().list_blobs(bucket, prefix="p/.datamover-uploads/")]
    assert len(names) == 2 and all(f"/{upload.upload_id}/" in name for name in names), names
    assert [item.key for item in store.list_page("p/", None).objects] == ["p/kept"], "listings leave the area out"
    store.abort_upload(upload)
    assert [blob.name for blob in fake_gcs.client().list_blobs(bucket)] == ["p/kept"]


def test_azure_an_upload_is_uncommitted_blocks_the_vendor_sdk_sees_until_aborted(
    azurite: AzuriteServer, azure_container: ContainerFactory,
) -> None:
    container = azure_container()
    store = open_store(azure_config(azurite, container))
    upload = store.create_upload("k", ATTRIBUTES)
    store.upload_part(upload, 1, b"x" * 1000, md5_b64(b"x" * 1000))
    blob = azurite.client().get_blob_client(container, "k")
    assert len(blob.get_block_list("uncommitted")[1]) == 2, "the marker and one part"
    assert not blob.exists(), "uncommitted blocks are no blob to readers"
    store.abort_upload(upload)
    assert not blob.exists()
    assert list(azurite.client().get_container_client(container).list_blobs(include=["uncommittedblobs"])) == []


def test_azure_an_abort_over_a_committed_blob_keeps_it_and_says_so(
    azurite: AzuriteServer, azure_container: ContainerFactory,
) -> None:
    container = azure_container()
    store = open_store(azure_config(azurite, container))
    store.put("k", b"the old object", ATTRIBUTES, md5_b64(b"the old object"))
    upload = store.create_upload("k", ATTRIBUTES)
    store.upload_part(upload, 1, b"x" * 1000, md5_b64(b"x" * 1000))
    with pytest.raises(StoreError) as raised:
        store.abort_upload(upload)
    assert raised.value.code == "UncommittedBlocksKept" and "seven days" in raised.value.message
    blob = azurite.client().get_blob_client(container, "k")
    assert blob.download_blob(decompress=False).readall() == b"the old object", "readers see the old blob unchanged"
    assert list(store.list_uploads("k")) == [upload], "the fragment stays listed, so the janitor keeps it"


def test_azure_metadata_names_azure_refuses_and_expires_read_back_exactly(
    azurite: AzuriteServer, azure_container: ContainerFactory,
) -> None:
    container = azure_container()
    store = open_store(azure_config(azurite, container))
    store.put("k", b"body", ATTRIBUTES, md5_b64(b"body"))
    stored = azurite.client().get_blob_client(container, "k").get_blob_properties().metadata
    assert stored["owner"] == "ops" and stored["datamover_x_" + b"k-2".hex()] == "v 2"
    assert stored["datamover_expires"] == ATTRIBUTES.expires
    info = store.stat("k")
    assert info is not None and info.attributes == ATTRIBUTES


@pytest.mark.parametrize("kind", ["azure", "gcs"])
def test_a_whole_write_states_its_md5_beside_the_opaque_etag(
    kind: str, azurite: AzuriteServer, azure_container: ContainerFactory, fake_gcs: FakeGcsServer,
    gcs_bucket: ContainerFactory,
) -> None:
    """What lets skip-identical and verification compare without reading the bytes back (ETags are opaque here)."""
    store = open_store(azure_config(azurite, azure_container()) if kind == "azure"
                       else gcs_config(fake_gcs, gcs_bucket()))
    store.put("k", b"some bytes", ObjectAttributes(), md5_b64(b"some bytes"))
    info = store.stat("k")
    assert info is not None and info.known_md5 == hashlib.md5(b"some bytes").hexdigest()
