"""Exact fidelity against real stores: tags, storage class and server-side encryption survive, or the object fails.

Judged through boto3 and the Azure SDK directly (HEAD, GetObjectTagging, the blob's properties), never through the
backend under test; bytes by `rclone check --download`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from typing import Any

from azure.storage.blob import StandardBlobTier

from datamover.backends import open_store
from datamover.engine import AbortSignal, MigrationOptions, MigrationResult, Outcome, migrate
from tests.ground.clouds import AzuriteServer, FakeGcsServer
from tests.ground.plugin_clouds import ContainerFactory
from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import KMS_KEY_ID, S3Server, rclone_check
from tests.integration.test_engine_minio import config, open_
from tests.integration.test_store_conformance_clouds import azure_config, gcs_config
from tests.unit import RecordingSink

MiB = 1024 * 1024
OPTIONS: dict[str, Any] = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 4,
                           "part_concurrency": 4, "progress_interval": 0.2}
# key -> (size, tags, storage class as written at the source; None is the default class)
DATASET: dict[str, tuple[int, dict[str, str], str | None]] = {
    "small-tagged": (1000, {"team": "data", "note": "a b+c=d/e:f@g"}, None),
    "small-rrs": (2000, {"tier": "cold"}, "REDUCED_REDUNDANCY"),
    "small-plain": (3000, {}, None),
    "big-tagged": (11 * MiB, {"team": "ml"}, "REDUCED_REDUNDANCY"),
    "big-plain": (6 * MiB, {}, None),
}


def _fill(server: S3Server, bucket: str) -> dict[str, str]:
    client, md5s = server.client(), {}
    for key, (size, tags, storage_class) in DATASET.items():
        body = os.urandom(size)
        extra: dict[str, Any] = {"Metadata": {"origin": "fidelity"}}
        if tags:
            extra["Tagging"] = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in tags.items())
        if storage_class:
            extra["StorageClass"] = storage_class
        client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        md5s[key] = hashlib.md5(body).hexdigest()
    return md5s


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _tags(server: S3Server, bucket: str, key: str) -> dict[str, str]:
    tag_set = server.client().get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in tag_set}


def _head(server: S3Server, bucket: str, key: str) -> Any:
    return server.client().head_object(Bucket=bucket, Key=key)


def _run(source: Any, destination: Any, **options: Any) -> MigrationResult:
    return migrate(source, destination, MigrationOptions(**{**OPTIONS, **options}), AbortSignal(), RecordingSink())


def _assert_bytes_equal(source: S3Server, source_bucket: str, destination: S3Server, destination_bucket: str) -> None:
    result = rclone_check(source, source_bucket, destination, destination_bucket)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tags_and_storage_class_survive_streamed_copies_and_a_changed_tag_is_copied_again(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    _fill(cloud_a, source_bucket)
    source, destination = open_(cloud_a, source_bucket), open_(cloud_b, destination_bucket)

    result = _run(source, destination)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    _assert_bytes_equal(cloud_a, source_bucket, cloud_b, destination_bucket)
    for key, (_, tags, storage_class) in DATASET.items():
        assert _tags(cloud_b, destination_bucket, key) == tags, key
        assert _head(cloud_b, destination_bucket, key).get("StorageClass") == storage_class, key
        assert _head(cloud_b, destination_bucket, key)["Metadata"] == {"origin": "fidelity"}, key

    again = _run(source, destination)
    assert again.progress.objects_skipped == len(DATASET), "an exact copy is recognised as one"

    cloud_a.client().put_object_tagging(Bucket=source_bucket, Key="big-tagged",
                                        Tagging={"TagSet": [{"Key": "team", "Value": "platform"}]})
    third = _run(source, destination)
    assert (third.progress.objects_migrated, third.progress.objects_skipped) == (1, len(DATASET) - 1)
    assert _tags(cloud_b, destination_bucket, "big-tagged") == {"team": "platform"}


def test_server_side_copies_keep_tags_and_storage_class(
    cloud_a: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_a)
    _fill(cloud_a, source_bucket)

    result = _run(open_(cloud_a, source_bucket), open_(cloud_a, destination_bucket))

    assert result.outcome is Outcome.SUCCEEDED, result.error
    for key, (_, tags, storage_class) in DATASET.items():
        assert _tags(cloud_a, destination_bucket, key) == tags, key
        assert _head(cloud_a, destination_bucket, key).get("StorageClass") == storage_class, key


def test_a_storage_class_set_for_the_job_applies_to_every_copy_and_one_the_store_lacks_fails_each_object(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    _fill(cloud_a, source_bucket)
    source, destination = open_(cloud_a, source_bucket), open_(cloud_b, destination_bucket)

    refused = _run(source, destination, storage_class="GLACIER")  # a class MinIO does not have
    assert refused.outcome is Outcome.FAILED
    assert sorted(refused.failed_keys) == sorted(DATASET)
    assert "InvalidStorageClass" in (refused.error or "") or "storage class" in (refused.error or "").lower()
    assert not cloud_b.client().list_objects_v2(Bucket=destination_bucket).get("Contents")
    assert not cloud_b.client().list_multipart_uploads(Bucket=destination_bucket).get("Uploads")

    result = _run(source, destination, storage_class="REDUCED_REDUNDANCY")
    assert result.outcome is Outcome.SUCCEEDED, result.error
    for key in DATASET:
        assert _head(cloud_b, destination_bucket, key).get("StorageClass") == "REDUCED_REDUNDANCY", key
    assert _run(source, destination, storage_class="REDUCED_REDUNDANCY").progress.objects_skipped == len(DATASET)
    _assert_bytes_equal(cloud_a, source_bucket, cloud_b, destination_bucket)


def test_server_side_encryption_is_asked_for_every_copy_and_an_unencrypted_copy_is_written_again(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory,
) -> None:
    source_bucket, destination_bucket = bucket_factory(cloud_a), bucket_factory(cloud_b)
    _fill(cloud_a, source_bucket)
    source = open_(cloud_a, source_bucket)
    assert _run(source, open_(cloud_b, destination_bucket)).outcome is Outcome.SUCCEEDED  # unencrypted copies

    encrypted = open_store(config(cloud_b, destination_bucket, server_side_encryption="AES256"))
    result = _run(source, encrypted)
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.progress.objects_migrated == len(DATASET), "same bytes, but not encrypted as asked: written again"
    for key in DATASET:
        assert _head(cloud_b, destination_bucket, key).get("ServerSideEncryption") == "AES256", key
    assert _run(source, encrypted).progress.objects_skipped == len(DATASET)
    _assert_bytes_equal(cloud_a, source_bucket, cloud_b, destination_bucket)

    kms_bucket = bucket_factory(cloud_b)
    with_key = open_store(config(cloud_b, kms_bucket, server_side_encryption="aws:kms", kms_key_id=KMS_KEY_ID))
    result = _run(source, with_key)  # KMS ETags are not MD5s: each copy is verified by reading it back
    assert result.outcome is Outcome.SUCCEEDED, result.error
    for key, (_, tags, _) in DATASET.items():
        head = _head(cloud_b, kms_bucket, key)
        assert head.get("ServerSideEncryption") == "aws:kms" and KMS_KEY_ID in head.get("SSEKMSKeyId", ""), key
        assert _tags(cloud_b, kms_bucket, key) == tags, key
    _assert_bytes_equal(cloud_a, source_bucket, cloud_b, kms_bucket)


def test_a_store_without_tags_or_the_class_fails_just_the_objects_that_have_them(
    cloud_a: S3Server, fake_gcs: FakeGcsServer, gcs_bucket: ContainerFactory, bucket_factory: BucketFactory,
) -> None:
    source_bucket, bucket = bucket_factory(cloud_a), gcs_bucket()
    md5s = _fill(cloud_a, source_bucket)

    result = _run(open_(cloud_a, source_bucket), open_store(gcs_config(fake_gcs, bucket)))

    # GCS objects have no tags, and S3's REDUCED_REDUNDANCY has no GCS counterpart.
    untaken = sorted(key for key, (_, tags, storage_class) in DATASET.items() if tags or storage_class)
    assert result.outcome is Outcome.FAILED
    assert sorted(result.failed_keys) == untaken
    assert "tag(s), which this store cannot keep" in (result.error or "")
    written = {blob.name: blob for blob in fake_gcs.client().list_blobs(bucket)}
    assert sorted(written) == sorted(set(DATASET) - set(untaken)), "the others moved, the refused ones are absent"
    for key, blob in written.items():
        assert hashlib.md5(blob.download_as_bytes()).hexdigest() == md5s[key], key
    # Each copy names its class (STANDARD), rather than taking the bucket's default.
    for key in written:
        assert fake_gcs.client().bucket(bucket).get_blob(key).storage_class == "STANDARD", key


def test_tiers_classes_and_index_tags_map_between_azure_gcs_and_s3(
    cloud_b: S3Server, azurite: AzuriteServer, azure_container: ContainerFactory, fake_gcs: FakeGcsServer,
    gcs_bucket: ContainerFactory, bucket_factory: BucketFactory,
) -> None:
    source = azure_container()
    blobs = azurite.client().get_container_client(source)
    bodies = {"hot-tagged": os.urandom(3000), "cool-plain": os.urandom(4000)}
    blobs.upload_blob("hot-tagged", bodies["hot-tagged"], tags={"owner": "ops", "stage": "raw data"})
    blobs.upload_blob("cool-plain", bodies["cool-plain"], standard_blob_tier=StandardBlobTier.COOL)
    azure_source = open_store(azure_config(azurite, source))

    # Azure -> Azure (server-side): tier and index tags both kept.
    twin = azure_container()
    assert _run(azure_source, open_store(azure_config(azurite, twin))).outcome is Outcome.SUCCEEDED
    twins = azurite.client().get_container_client(twin)
    assert twins.get_blob_client("hot-tagged").get_blob_tags() == {"owner": "ops", "stage": "raw data"}
    assert twins.get_blob_client("cool-plain").get_blob_properties().blob_tier == "Cool"

    # Azure -> GCS: Cool is NEARLINE; index tags have nowhere to go, so that object fails alone.
    bucket = gcs_bucket()
    to_gcs = _run(azure_source, open_store(gcs_config(fake_gcs, bucket)))
    assert (to_gcs.outcome, to_gcs.failed_keys) == (Outcome.FAILED, ("hot-tagged",))
    (gcs_copy,) = fake_gcs.client().list_blobs(bucket)
    assert (gcs_copy.name, gcs_copy.storage_class) == ("cool-plain", "NEARLINE")
    assert gcs_copy.download_as_bytes() == bodies["cool-plain"]

    # GCS -> Azure: NEARLINE is Cool again.
    back = azure_container()
    assert _run(open_store(gcs_config(fake_gcs, bucket)), open_store(azure_config(azurite, back))).outcome \
        is Outcome.SUCCEEDED
    assert azurite.client().get_container_client(back).get_blob_client("cool-plain").get_blob_properties() \
        .blob_tier == "Cool"

    # Azure -> S3: index tags become object tags; Cool is STANDARD_IA, a class MinIO does not have: refused there.
    s3_bucket = bucket_factory(cloud_b)
    to_s3 = _run(azure_source, open_store(config(cloud_b, s3_bucket)))
    assert (to_s3.outcome, to_s3.failed_keys) == (Outcome.FAILED, ("cool-plain",))
    assert _tags(cloud_b, s3_bucket, "hot-tagged") == {"owner": "ops", "stage": "raw data"}
    assert cloud_b.client().get_object(Bucket=s3_bucket, Key="hot-tagged")["Body"].read() == bodies["hot-tagged"]
    assert [o["Key"] for o in cloud_b.client().list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["hot-tagged"]
