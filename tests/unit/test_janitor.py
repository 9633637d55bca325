"""The operator's janitor (moto): aborts recorded upload IDs and every upload of ours on the intended keys."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from datamover.api import MigrationSpec, WorkerReport
from datamover.backends.base import ObjectAttributes
from datamover.controller import handlers
from datamover.engine import OpenUpload, UploadIntent, WorkerState
from tests.unit import moto_s3, store


def test_janitor_closes_intended_keys_and_recorded_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_s3():
        destination = store("dst", "", "b")
        since = dt.datetime.now(dt.UTC).replace(microsecond=0)
        unrecorded = destination.create_upload("moved/a", ObjectAttributes()).upload_id  # never reached status
        recorded = destination.create_upload("moved/b", ObjectAttributes()).upload_id
        foreign = destination.create_upload("moved/c", ObjectAttributes()).upload_id
        monkeypatch.setattr(handlers, "open_store", lambda config: destination)
        events: list[dict[str, Any]] = []
        monkeypatch.setattr(handlers, "_event", lambda body, **kwargs: events.append(kwargs))
        report = WorkerReport(state=WorkerState.FAILED, upload_intents=(UploadIntent("moved/a", since),),
                              open_uploads=(OpenUpload("dst", "moved/b", recorded),))
        raw_spec = {"source": {"bucket": "src"}, "destination": {"bucket": "dst"}}
        body = {"metadata": {"namespace": "ns", "name": "job"}, "spec": raw_spec,
                "status": {"workers": {"0": report.to_status()}}}
        spec = MigrationSpec.from_spec(raw_spec)

        patch = handlers._janitor(body, spec)

        assert patch == {"0": {"openUploads": [], "uploadIntents": []}}
        left = [u["UploadId"] for u in destination.client.list_multipart_uploads(Bucket="dst").get("Uploads", [])]
        assert left == [foreign] and unrecorded not in left
        assert events and events[0]["reason"] == "UploadsAborted" and events[0]["type"] == "Normal"
