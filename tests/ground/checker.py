"""An independent judge of a migration's result: plain boto3 and hashlib, no code shared with `datamover`.

Give it the two sides (endpoint, credentials, bucket, prefix), the mode (copy or move) and the source inventory
captured before the run; it reads both stores and says, for every original key, whether it is

- untouched: still in the source unchanged, and at the destination absent (or byte- and header-identical, e.g. a
  copy left by a previous run or by a kill between verification and the source delete);
- migrated: at the destination byte-identical with identical content headers and user metadata (in move mode: and
  gone from the source);
- violating: anything else (wrong bytes, wrong or foreign metadata, source changed, missing everywhere, ...).

It also lists every multipart upload still open on the destination bucket (the whole bucket, paginated: MinIO lists
nothing for a folder prefix while an upload is open under it) and every destination object under the prefix that no
original key accounts for. Used by the failure matrix (tests/integration/test_failure_matrix.py) after every trial.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The content headers that must travel with the bytes (HTTP names, as the store answers them).
CONTENT_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language", "cache-control",
                   "expires")
META_PREFIX = "x-amz-meta-"
READ_SIZE = 1 << 20

UNTOUCHED, MIGRATED, VIOLATING = "untouched", "migrated", "violating"


@dataclass(frozen=True)
class Side:
    """One end of a migration: where to reach it and which part of which bucket it is."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"

    def client(self) -> S3Client:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )


@dataclass(frozen=True)
class ObjectRecord:
    """What an object is, as a user would notice: its bytes, its content headers and its user metadata."""

    size: int
    sha256: str
    headers: Mapping[str, str]  # CONTENT_HEADERS present on the object, lowercase names
    metadata: Mapping[str, str]  # user metadata, lowercase names without x-amz-meta-

    def differences(self, other: ObjectRecord) -> list[str]:
        """What differs from `other` (empty if nothing), in words."""
        found = []
        if (self.size, self.sha256) != (other.size, other.sha256):
            found.append(f"bytes differ (size {other.size} vs {self.size}, sha256 {other.sha256[:12]} vs "
                         f"{self.sha256[:12]})")
        if dict(self.headers) != dict(other.headers):
            found.append(f"content headers {dict(other.headers)} vs {dict(self.headers)}")
        if dict(self.metadata) != dict(other.metadata):
            found.append(f"user metadata {dict(other.metadata)} vs {dict(self.metadata)}")
        return found


def read_record(client: S3Client, bucket: str, key: str) -> ObjectRecord | None:
    """The object's record (bytes hashed while streaming), or None if the key does not exist."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    http: Mapping[str, str] = response["ResponseMetadata"]["HTTPHeaders"]
    digest = hashlib.sha256()
    size = 0
    body = response["Body"]
    try:
        while chunk := body.read(READ_SIZE):
            digest.update(chunk)
            size += len(chunk)
    finally:
        body.close()
    headers = {name: http[name] for name in CONTENT_HEADERS if name in http}
    metadata = {name[len(META_PREFIX):]: value for name, value in http.items() if name.startswith(META_PREFIX)}
    return ObjectRecord(size=size, sha256=digest.hexdigest(), headers=headers, metadata=metadata)


def _keys(client: S3Client, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def capture_inventory(side: Side) -> dict[str, ObjectRecord]:
    """Every object under the side's prefix, keyed by its key relative to the prefix (call before the run)."""
    client = side.client()
    inventory = {}
    for key in _keys(client, side.bucket, side.prefix):
        record = read_record(client, side.bucket, key)
        if record is not None:
            inventory[key[len(side.prefix):]] = record
    return inventory


def open_uploads(side: Side) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(open, ghosts): (key, upload ID) of every multipart upload listed anywhere in the side's bucket, all pages,
    split by whether the store still holds it (see holds_upload)."""
    client = side.client()
    listed = list_open_uploads(client, side.bucket)
    held = [(key, upload_id) for key, upload_id in listed if holds_upload(client, side.bucket, key, upload_id)]
    return held, [upload for upload in listed if upload not in held]


def held_uploads(client: Any, bucket: str) -> list[tuple[str, str]]:
    """(key, upload ID) of every upload the bucket lists and holds: the fragments a test must find none of."""
    return [(key, upload_id) for key, upload_id in list_open_uploads(client, bucket)
            if holds_upload(client, bucket, key, upload_id)]


def holds_upload(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """Whether the store holds the listed upload (ListParts answers for it), or only lists it.

    MinIO answers a bucket-wide ListMultipartUploads from an in-memory record of the uploads it created, dropped
    only when a CompleteMultipartUpload or AbortMultipartUpload returns success. A client killed while its complete
    is in flight leaves the object committed, the upload gone from storage (ListParts and AbortMultipartUpload
    answer NoSuchUpload) and its ID still listed until the server's stale-upload expiry. Such a ghost holds no
    bytes, so it is not a fragment; it is reported apart, never hidden.
    """
    try:
        client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=1)
    except client.exceptions.NoSuchUpload:
        return False
    return True


def list_open_uploads(client: Any, bucket: str) -> list[tuple[str, str]]:
    """open_uploads() for one client and bucket (MinIO ignores MaxUploads; AWS pages at 1000)."""
    found: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket}
    while True:
        answer = client.list_multipart_uploads(**kwargs)
        found += [(upload["Key"], upload["UploadId"]) for upload in answer.get("Uploads", [])]
        if not answer.get("IsTruncated"):
            return found
        kwargs["KeyMarker"] = answer.get("NextKeyMarker", "")
        kwargs["UploadIdMarker"] = answer.get("NextUploadIdMarker", "")


@dataclass(frozen=True)
class Verdict:
    key: str  # relative to the prefixes
    state: str  # UNTOUCHED, MIGRATED or VIOLATING
    detail: str = ""
    both_places: bool = False  # untouched with an identical copy at the destination too


@dataclass
class Report:
    mode: str
    verdicts: dict[str, Verdict]
    open_uploads: list[tuple[str, str]]
    strays: list[str]  # destination keys under the prefix that no original key accounts for
    ghost_uploads: list[tuple[str, str]] = field(default_factory=list)  # listed, not held (holds_upload)

    def count(self, state: str) -> int:
        return sum(1 for v in self.verdicts.values() if v.state == state)

    @property
    def both_places(self) -> list[str]:
        return sorted(v.key for v in self.verdicts.values() if v.both_places)

    def problems(self, *, complete: bool = False, both_places_ok: bool = True) -> list[str]:
        """Everything wrong, one line each; empty means the contract holds.

        complete: every key must be migrated (after a run that ended successfully).
        both_places_ok: in move mode, an untouched source with an identical copy at the destination is allowed
        (a crash between verification and delete); an abort must finish the delete, so pass False there.
        """
        found = [f"open multipart upload on {key!r} ({upload_id})" for key, upload_id in self.open_uploads]
        found += [f"stray object at the destination: {key!r}" for key in self.strays]
        for verdict in sorted(self.verdicts.values(), key=lambda v: v.key):
            if verdict.state == VIOLATING:
                found.append(f"{verdict.key!r}: {verdict.detail}")
            elif complete and verdict.state != MIGRATED:
                found.append(f"{verdict.key!r}: not migrated after a successful run ({verdict.detail or 'untouched'})")
            elif verdict.both_places and not both_places_ok and self.mode == "move":
                found.append(f"{verdict.key!r}: in both places after an aborted move")
        return found

    def render(self) -> str:
        lines = [f"checker: mode={self.mode} untouched={self.count(UNTOUCHED)} migrated={self.count(MIGRATED)} "
                 f"violating={self.count(VIOLATING)} both_places={len(self.both_places)} "
                 f"open_uploads={len(self.open_uploads)} strays={len(self.strays)}"]
        lines += [f"  {v.key!r}: {v.state}{' (both places)' if v.both_places else ''}"
                  f"{': ' + v.detail if v.detail else ''}" for v in sorted(self.verdicts.values(), key=lambda v: v.key)]
        lines += [f"  open upload {key!r} {upload_id}" for key, upload_id in self.open_uploads]
        lines += [f"  listed but not held (a ghost, not a fragment) {key!r} {upload_id}"
                  for key, upload_id in self.ghost_uploads]
        lines += [f"  stray {key!r}" for key in self.strays]
        return "\n".join(lines)


def judge_key(key: str, mode: str, original: ObjectRecord, at_source: ObjectRecord | None,
              at_destination: ObjectRecord | None) -> Verdict:
    """The verdict for one key from what each side holds now (pure, so it is unit-tested on every combination)."""
    if mode not in ("copy", "move"):
        raise ValueError(f"mode must be copy or move, not {mode!r}")
    source_intact = at_source is not None and not original.differences(at_source)
    destination_exact = at_destination is not None and not original.differences(at_destination)
    if at_destination is not None and not destination_exact:
        return Verdict(key, VIOLATING, "destination differs from the original: "
                       + "; ".join(original.differences(at_destination)))
    if at_source is not None and not source_intact:
        return Verdict(key, VIOLATING, "source changed: " + "; ".join(original.differences(at_source)))
    if at_source is None and at_destination is None:
        return Verdict(key, VIOLATING, "missing everywhere (gone from the source, not at the destination)")
    if mode == "copy":
        if at_source is None:
            return Verdict(key, VIOLATING, "copy mode deleted the source")
        return Verdict(key, MIGRATED if destination_exact else UNTOUCHED)
    if at_source is None:
        return Verdict(key, MIGRATED)  # destination exact, source gone
    if destination_exact:
        return Verdict(key, UNTOUCHED, "identical copy at the destination, source kept", both_places=True)
    return Verdict(key, UNTOUCHED)


def check(source: Side, destination: Side, mode: str, inventory: Mapping[str, ObjectRecord]) -> Report:
    """Judge the current state of both sides against the inventory captured before the run."""
    src, dst = source.client(), destination.client()
    verdicts = {}
    for key, original in inventory.items():
        verdicts[key] = judge_key(
            key, mode, original,
            read_record(src, source.bucket, source.prefix + key),
            read_record(dst, destination.bucket, destination.prefix + key),
        )
    strays = sorted(key for key in _keys(dst, destination.bucket, destination.prefix)
                    if key[len(destination.prefix):] not in inventory)
    held, ghosts = open_uploads(destination)
    return Report(mode=mode, verdicts=verdicts, open_uploads=held, strays=strays, ghost_uploads=ghosts)
