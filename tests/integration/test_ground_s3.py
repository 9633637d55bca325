"""Proofs that the S3 ground is real: two MinIO servers with their own credentials, and rclone judging them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from tests.ground.plugin_s3 import BucketFactory
from tests.ground.s3 import S3Server, rclone_check, start_minio

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

pytestmark = pytest.mark.ground


def open_uploads(server: S3Server, bucket: str, key: str | None = None) -> list[str]:
    # MinIO only honours an empty prefix or an object's full key here (a "dir/" prefix lists nothing).
    answer = server.client().list_multipart_uploads(Bucket=bucket, Prefix=key or "")
    return [u["UploadId"] for u in answer.get("Uploads", [])]


def test_the_two_clouds_are_separate_servers_with_separate_credentials(cloud_a: S3Server, cloud_b: S3Server) -> None:
    assert cloud_a.endpoint != cloud_b.endpoint
    assert cloud_a.access_key != cloud_b.access_key
    impostor = S3Server(name="impostor", endpoint=cloud_b.endpoint, access_key=cloud_a.access_key,
                        secret_key=cloud_a.secret_key, log_path=cloud_b.log_path)
    with pytest.raises(ClientError) as excinfo:
        impostor.client().list_buckets()
    assert excinfo.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_multipart_upload_is_listed_until_completed_or_aborted(
    cloud_a: S3Server, bucket_factory: BucketFactory
) -> None:
    s3, bucket = cloud_a.client(), bucket_factory(cloud_a)

    done = s3.create_multipart_upload(Bucket=bucket, Key="big/done.bin")["UploadId"]
    dropped = s3.create_multipart_upload(Bucket=bucket, Key="big/dropped.bin")["UploadId"]
    assert sorted(open_uploads(cloud_a, bucket)) == sorted([done, dropped])
    assert open_uploads(cloud_a, bucket, "big/done.bin") == [done]

    part = s3.upload_part(Bucket=bucket, Key="big/done.bin", UploadId=done, PartNumber=1, Body=b"x" * 1024)
    assert open_uploads(cloud_a, bucket, "big/done.bin") == [done]  # parts alone do not finish an upload
    s3.complete_multipart_upload(Bucket=bucket, Key="big/done.bin", UploadId=done,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert open_uploads(cloud_a, bucket) == [dropped]
    assert s3.head_object(Bucket=bucket, Key="big/done.bin")["ContentLength"] == 1024

    s3.abort_multipart_upload(Bucket=bucket, Key="big/dropped.bin", UploadId=dropped)
    assert open_uploads(cloud_a, bucket) == []
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=bucket, Key="big/dropped.bin")
    assert excinfo.value.response["Error"]["Code"] == "404"


def test_rclone_check_across_the_two_clouds(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory
) -> None:
    src, dst = bucket_factory(cloud_a), bucket_factory(cloud_b)
    objects = {f"data/obj-{i}.txt": f"payload {i}\n".encode() * (i + 1) for i in range(5)}
    for key, body in objects.items():
        cloud_a.client().put_object(Bucket=src, Key=key, Body=body)
        cloud_b.client().put_object(Bucket=dst, Key=key, Body=body)

    same = rclone_check(cloud_a, src, cloud_b, dst)
    assert same.returncode == 0, same.stderr
    assert "0 differences found" in same.stderr

    # Same size, different bytes: only a real hash comparison can tell.
    tampered = bytearray(objects["data/obj-2.txt"])
    tampered[0] ^= 0x01
    cloud_b.client().put_object(Bucket=dst, Key="data/obj-2.txt", Body=bytes(tampered))
    differ = rclone_check(cloud_a, src, cloud_b, dst)
    assert differ.returncode != 0
    assert "data/obj-2.txt" in differ.stderr
    assert "1 differences found" in differ.stderr

    cloud_b.client().put_object(Bucket=dst, Key="data/obj-2.txt", Body=objects["data/obj-2.txt"])
    cloud_b.client().delete_object(Bucket=dst, Key="data/obj-4.txt")
    missing = rclone_check(cloud_a, src, cloud_b, dst)
    assert missing.returncode != 0
    assert "data/obj-4.txt" in missing.stderr

    # "bucket/prefix" narrows the comparison: an identical prefix passes while the whole bucket still differs.
    for server, bucket in ((cloud_a, src), (cloud_b, dst)):
        server.client().put_object(Bucket=bucket, Key="keep/same.txt", Body=b"same on both sides\n")
    assert rclone_check(cloud_a, f"{src}/keep", cloud_b, f"{dst}/keep").returncode == 0
    assert rclone_check(cloud_a, src, cloud_b, dst).returncode != 0


def upload_in_parts(server: S3Server, bucket: str, key: str, body: bytes, part_size: int = 5 * 1024 * 1024) -> None:
    s3 = server.client()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    for number, offset in enumerate(range(0, len(body), part_size), start=1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                Body=body[offset:offset + part_size])
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def test_rclone_check_compares_multipart_objects_byte_for_byte(
    cloud_a: S3Server, cloud_b: S3Server, bucket_factory: BucketFactory
) -> None:
    src, dst = bucket_factory(cloud_a), bucket_factory(cloud_b)
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # two parts
    tampered = body[:-1] + b"\x00"
    upload_in_parts(cloud_a, src, "big.bin", body)
    upload_in_parts(cloud_b, dst, "big.bin", tampered)

    # Multipart ETags are not MD5s: a hash-only check cannot see the difference...
    blind = rclone_check(cloud_a, src, cloud_b, dst, download=False)
    assert blind.returncode == 0, blind.stderr
    assert "1 hashes could not be checked" in blind.stderr
    # ...which is why rclone_check reads both sides by default.
    strict = rclone_check(cloud_a, src, cloud_b, dst)
    assert strict.returncode != 0
    assert "big.bin: contents differ" in strict.stderr

    upload_in_parts(cloud_b, dst, "big.bin", body)
    assert rclone_check(cloud_a, src, cloud_b, dst).returncode == 0


def test_a_stopped_server_leaves_its_log_and_no_data(tmp_path: Path) -> None:
    with start_minio(tmp_path, "short-lived", "short-admin", "short-secret-key") as server:
        server.client().create_bucket(Bucket="short-lived")
        server.client().put_object(Bucket="short-lived", Key="k", Body=b"x" * 1024)
        assert server.data_dir is not None and any(server.data_dir.rglob("*"))
    assert not server.data_dir.exists()
    assert server.log_path.exists()
