"""Which replica acts under kopf peering: the one no live peer outranks (kopf's rule, read from its peering status)."""

from __future__ import annotations

import datetime as dt

from datamover.controller.peering import is_active

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seen_seconds_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - dt.timedelta(seconds=seen_seconds_ago)).isoformat()}


def test_alone_or_only_with_lower_peers_it_acts() -> None:
    assert is_active({}, "me", 10, NOW)
    assert is_active({"me": peer(10, 1)}, "me", 10, NOW)
    assert is_active({"me": peer(10, 1), "other": peer(5, 1)}, "me", 10, NOW)


def test_a_live_peer_of_higher_or_equal_priority_pauses_it() -> None:
    assert not is_active({"me": peer(10, 1), "other": peer(11, 1)}, "me", 10, NOW)
    # kopf pauses every replica that shares the highest priority: none of them may act.
    assert not is_active({"me": peer(10, 1), "other": peer(10, 1)}, "me", 10, NOW)


def test_a_peer_whose_heartbeat_stopped_no_longer_counts() -> None:
    assert is_active({"me": peer(10, 1), "other": peer(99, 61, lifetime=60)}, "me", 10, NOW)
    assert not is_active({"me": peer(10, 1), "other": peer(99, 59, lifetime=60)}, "me", 10, NOW)


def test_a_peer_that_signed_off_or_a_naive_timestamp_is_read_as_kopf_writes_it() -> None:
    # kopf removes its entry on a clean exit (null in a merge patch); timestamps without a zone are UTC.
    naive = (NOW - dt.timedelta(seconds=5)).replace(tzinfo=None).isoformat()
    assert is_active({"other": None}, "me", 10, NOW)
    assert not is_active({"other": {"priority": 20, "lifetime": 60, "lastseen": naive}}, "me", 10, NOW)
