"""`kubectl datamover status`: what a person reads about a job, overall and per worker."""

from __future__ import annotations

import pytest

from datamover.cli import main as cli
from datamover.cli.main import bar, render


def _job(status: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"name": "photos", "namespace": "migrations"},
            "spec": {"destination": {"bucket": "dst"}}, "status": status}


def test_a_bar_fills_with_the_share_done() -> None:
    assert bar(0, 100, 10) == "[..........]"
    assert bar(50, 100, 10) == "[#####.....]"
    assert bar(150, 100, 10) == "[##########]"
    assert bar(5, 0, 10) == "[..........]"  # nothing listed yet


def test_status_shows_phase_overall_progress_each_worker_rate_and_eta() -> None:
    mib = 2**20
    text = render(_job({
        "phase": "running", "reason": "Migrating", "message": "2 worker(s) running",
        "workers": {
            "0": {"state": "running", "objectsTotal": 4, "objectsMigrated": 1, "bytesTotal": 4 * mib,
                  "bytesMigrated": mib, "listingDone": True, "bytesPerSecond": mib, "objectsPerSecond": 1,
                  "lastProgressTime": "2026-12-03T10:00:00Z"},
            "1": {"state": "succeeded", "objectsTotal": 4, "objectsMigrated": 3, "objectsFailed": 1,
                  "bytesTotal": 4 * mib, "bytesMigrated": 4 * mib, "listingDone": True},
        },
    }))
    lines = text.splitlines()
    assert lines[0] == "migrations/photos: running (Migrating)"
    assert lines[1] == "  2 worker(s) running"
    assert "62%" in lines[2] and "4/8 objects" in lines[2] and "5.0MiB/8.0MiB" in lines[2]
    assert "1.0MiB/s" in lines[2] and "ETA 3s" in lines[2] and "2026-12-03T10:00:00Z" in lines[2]
    assert lines[3].startswith("  worker 0") and "running" in lines[3] and "1/4 objects" in lines[3]
    assert lines[4].startswith("  worker 1") and "1 failed" in lines[4] and "/s" not in lines[4]
    assert "1 object(s) failed" in lines[5] and "kubectl describe mj photos -n migrations" in lines[5]


def test_status_of_a_job_the_operator_has_not_answered_yet() -> None:
    assert render(_job({})).splitlines()[0] == "migrations/photos: (no status yet)"


def test_status_of_a_plan_shows_what_a_run_would_do() -> None:
    plan = {"copy": {"objects": 3, "bytes": 3 * 2**20}, "identical": {"objects": 1, "bytes": 1000},
            "deleteFromSource": {"objects": 0, "bytes": 0}, "excluded": {"objects": 2, "bytes": 700},
            "byMechanism": {"single": {"objects": 2, "bytes": 2 * 2**20}, "multipart": {"objects": 1, "bytes": 2**20}},
            "runRequests": {"source": {"GetObject": 2, "ListObjectsV2": 1}, "destination": {"PutObject": 2}},
            "planRequests": {"source": {"ListObjectsV2": 1}, "destination": {"ListObjectsV2": 1}}}
    text = render(_job({
        "phase": "succeeded", "reason": "Planned", "message": "a run would copy 3 object(s) (3.0MiB), ...",
        "workers": {"0": {"state": "succeeded", "objectsTotal": 4, "objectsPlanned": 4, "bytesTotal": 3 * 2**20 + 1000,
                          "bytesPlanned": 3 * 2**20 + 1000, "listingDone": True, "plan": plan}},
    }))
    lines = text.splitlines()
    assert lines[0] == "migrations/photos: succeeded (Planned)"
    assert "100%" in lines[2] and "4/4 objects" in lines[2]
    assert "4/4 objects" in lines[3]
    assert lines[4] == "  plan (a run would do this; the plan wrote nothing):"
    assert lines[5].split()[:4] == ["copy", "3", "objects", "3.0MiB"] and "multipart 1, single 2" in lines[5]
    assert lines[6].split()[:5] == ["skip", "as", "identical", "1", "objects"]
    assert "excluded by filter" in lines[8] and "700B" in lines[8]
    assert lines[9].split(None, 2)[2] == "source GetObject 2, ListObjectsV2 1; destination PutObject 2"
    assert "source ListObjectsV2 1; destination ListObjectsV2 1" in lines[10]
@pytest.mark.parametrize("argv", [["status", "photos", "-n", "migrations"], ["-n", "migrations", "status", "photos"]])
def test_the_namespace_may_come_before_or_after_the_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(cli, "_api", lambda args: (None, args.namespace))
    monkeypatch.setattr(cli, "status", lambda api, namespace, *_, **__: seen.append(namespace) or 0)
    assert cli.main(argv) == 0
    assert seen == ["migrations"]
