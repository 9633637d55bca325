"""Whether this replica is the active one under kopf peering, so that the reconcilers' own timers never act on a
replica that kopf has paused.

kopf pauses a replica that sees a live peer of higher (or equal) priority: it stops that replica's watch streams, so
no handler of ours runs there. But the reconcilers also wake on their own (the resync, the abort grace period, the
queue places) and would then act on indices that stopped changing when the watches stopped. kopf does not tell
handlers that it paused, so the replica reads the same peering objects kopf heartbeats into and applies kopf's rule
(pause while any other live peer has a priority at least ours); kopf's re-listing on resume brings every job back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("datamover.operator")

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


@dataclass(frozen=True)
class PeeringObject:
    """One kopf peering object this replica takes part in: the cluster's, or one per watched namespace."""

    name: str
    namespace: str | None = None  # None: ClusterKopfPeering (cluster-wide operator)

    @property
    def plural(self) -> str:
        return "kopfpeerings" if self.namespace else "clusterkopfpeerings"


def _parse(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def is_active(status: Mapping[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule for one peering object's status (identity -> {priority, lastseen, lifetime}): this replica runs
    unless another peer that is still alive has a priority at least as high."""
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        lifetime = dt.timedelta(seconds=int(info.get("lifetime", 60)))
        if lastseen is not None and _parse(str(lastseen)) + lifetime <= now:
            continue  # dead: its heartbeat stopped
        if int(info.get("priority", 0)) >= priority:
            return False
    return True
