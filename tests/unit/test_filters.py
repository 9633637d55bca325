"""spec.filter: rclone's glob rules on keys, size and time bounds, the spec's errors, and a filtered move that never
touches what it left out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from datamover.api import FilterSpec, MigrationSpec, SpecError
from datamover.backends.base import ObjectSummary
from datamover.engine import AbortSignal, MigrationOptions, ObjectFilter, Outcome, migrate
from tests.unit import RecordingSink, moto_s3, store

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def picks(filt: ObjectFilter, keys: list[str], size: int = 10, modified: dt.datetime | None = T0) -> list[str]:
    return [k for k in keys if filt.selects(ObjectSummary(k, size, "e", modified), k)]


KEYS = ["a.jpg", "2024/b.jpg", "2024/01/c.JPG", "2024/d.txt", "tmp/e.jpg", "top.txt", ".hidden/f.jpg"]


@pytest.mark.parametrize(("include", "exclude", "expected"), [
    ((), (), KEYS),
    # unanchored: matches at the end of the key, at any level (rclone's rule); * stays within a segment
    (("*.jpg",), (), ["a.jpg", "2024/b.jpg", "tmp/e.jpg", ".hidden/f.jpg"]),
    (("*.{jpg,JPG}",), ("tmp/**",), ["a.jpg", "2024/b.jpg", "2024/01/c.JPG", ".hidden/f.jpg"]),
    # anchored at the source prefix with a leading slash
    (("/*.txt",), (), ["top.txt"]),
    (("/2024/*",), (), ["2024/b.jpg", "2024/d.txt"]),
    (("/2024/**",), (), ["2024/b.jpg", "2024/01/c.JPG", "2024/d.txt"]),
    # exclude wins over include
    (("*.jpg",), ("/2024/**", "tmp/**"), ["a.jpg", ".hidden/f.jpg"]),
    ((), ("*.txt", "?.jpg"), ["2024/01/c.JPG"]),
])
def test_globs_follow_rclone(include: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]) -> None:
    assert picks(ObjectFilter(include=include, exclude=exclude), KEYS) == expected


def test_size_bounds_are_inclusive() -> None:
    filt = ObjectFilter(min_size=10, max_size=20)
    assert [s for s in (9, 10, 20, 21) if picks(filt, ["k"], size=s)] == [10, 20]


def test_time_bounds_after_inclusive_before_exclusive_and_unknown_times_left_out() -> None:
    filt = ObjectFilter(modified_after=T0, modified_before=T0 + dt.timedelta(days=1))
    at = [T0 - dt.timedelta(seconds=1), T0, T0 + dt.timedelta(hours=23), T0 + dt.timedelta(days=1)]
    assert [t for t in at if picks(filt, ["k"], modified=t)] == [T0, T0 + dt.timedelta(hours=23)]
    assert picks(filt, ["k"], modified=None) == []
    assert picks(ObjectFilter(), ["k"], modified=None) == ["k"]


def test_ages_count_back_from_the_jobs_creation() -> None:
    spec = FilterSpec.from_spec({"modifiedAfter": "30d", "modifiedBefore": "1d12h", "minSize": "1Ki", "maxSize": 2048})
    filt = spec.anchored(T0)
    assert filt.modified_after == T0 - dt.timedelta(days=30)
    assert filt.modified_before == T0 - dt.timedelta(hours=36)
    assert (filt.min_size, filt.max_size) == (1024, 2048)
    absolute = FilterSpec.from_spec({"modifiedAfter": "2024-01-31T00:00:00+01:00"}).anchored(T0)
    assert absolute.modified_after == dt.datetime(2024, 1, 30, 23, tzinfo=dt.UTC)


@pytest.mark.parametrize(("raw", "names"), [
    ({"minSize": "2Mi", "maxSize": "1Mi"}, "minSize is larger than maxSize"),
    ({"minSize": "lots"}, "spec.filter.minSize"),
    ({"modifiedAfter": "last tuesday"}, "spec.filter.modifiedAfter"),
    ({"modifiedBefore": "2024-01-31T00:00:00"}, "spec.filter.modifiedBefore"),
    ({"include": ["/"]}, "spec.filter.include"),
    ({"exclude": [""]}, "spec.filter.exclude"),
])
def test_bad_filters_name_the_field(raw: dict[str, object], names: str) -> None:
    with pytest.raises(SpecError, match=names.replace(".", r"\.")):
        MigrationSpec.from_spec({"source": {"bucket": "a"}, "destination": {"bucket": "b"}, "filter": raw})


@pytest.fixture
def moto() -> Iterator[None]:
    with moto_s3():
        yield


def test_a_filtered_move_moves_only_what_it_selects_and_never_deletes_the_rest(moto: None) -> None:
    source, destination = store("src", "in/", "a"), store("dst", "out/", "b")
    bodies = {"in/keep/a.jpg": b"a" * 100, "in/keep/b.jpg": b"b" * 5000, "in/keep/c.txt": b"c" * 100,
              "in/tmp/d.jpg": b"d" * 100}
    for key, body in bodies.items():
        source.client.put_object(Bucket="src", Key=key, Body=body)
    sink = RecordingSink()
    options = MigrationOptions(remain_source=False, progress_interval=0,
                               filter=ObjectFilter(include=("*.jpg",), exclude=("/tmp/**",), max_size=1000))
    result = migrate(source, destination, options, AbortSignal(), sink)

    assert result.outcome is Outcome.SUCCEEDED
    at_destination = {i["Key"] for i in destination.client.list_objects_v2(Bucket="dst").get("Contents", [])}
    in_source = {i["Key"] for i in source.client.list_objects_v2(Bucket="src").get("Contents", [])}
    assert at_destination == {"out/keep/a.jpg"}
    assert in_source == {"in/keep/b.jpg", "in/keep/c.txt", "in/tmp/d.jpg"}  # excluded: never deleted
    assert (result.progress.objects_total, result.progress.objects_excluded) == (1, 3)
