"""Whose service info stands while two versions of one service overlap (a rolling deploy).

There is one info hash per service name (the input contract clients check inputs against,
``-max_queue``, the version), but during a deploy two ``wkr-serving-start``\\ s of that name
serve at once. Each worker wrote the info when it started, so the last process to start won:
a worker of the old version that crashed and was restarted during the overlap put the old
contract back, and clients refused the new version's inputs from then on, even after the old
version was gone.

The info now belongs to the newest *deploy* that still has a live worker. A deploy is named by
when its supervisor started (epoch seconds as text, the same in every worker it starts and in
their heartbeats). A worker writes the info only if its deploy is at least as new as the one the info
names (``lua/write_info.lua``); on each heartbeat it looks at the deploy the info names, and a
worker of an older deploy takes the info back once no live worker of the newer one is left,
seen on two looks in a row: a new version writes its info just before its first heartbeat, and
one look could fall between the two.

Deploys are named on the broker Redis's clock, which every host shares. A worker started by
hand (not by ``wkr-serving-start``) is a deploy of its own, named by its own start on its
host's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from ..broker import ServiceRegistry
from ..clock import wall_time

__all__ = ["InfoOwner", "new_deploy"]

log = logging.getLogger(__name__)


def new_deploy(broker: redis.Redis | None = None) -> str:
    """The name of a deploy starting now: what a supervisor tells each worker it starts.

    On the broker's clock (``TIME``), which every host of the service shares, so deploys on
    hosts whose clocks differ are still ordered by when they started; a worker started by
    hand, which names its own deploy without asking Redis, uses this host's clock."""
    if broker is None:
        return f"{wall_time():.6f}"
    seconds, micros = broker.time()
    return f"{seconds}.{micros:06d}"


class InfoOwner:
    """One worker's side of the rule above, for service ``registry.keys.name``."""

    def __init__(self, registry: ServiceRegistry, make_info: Callable[[], dict[str, Any]],
                 deployed: str) -> None:
        self.registry = registry
        self.deployed = deployed
        self._make_info = make_info
        self._gone: str | None = None  # a newer deploy seen with no live worker, once

    def write(self, orphan: str = "") -> bool:
        """Write this worker's info unless a newer deploy's stands; True if written."""
        return self.registry.write_info(self._make_info(), self.deployed, orphan)

    def check(self) -> None:
        """On each heartbeat: write the info again where it is missing (a Redis restarted
        empty) or names an older deploy, and take it from a newer deploy that has gone."""
        named = self.registry.info_deployed()
        if named == self.deployed:
            self._gone = None
            return
        if named is None or not _newer(named, self.deployed):
            self._gone = None
            self.write()
            return
        if any(beat.get("deployed") == named for beat in self.registry.live_workers().values()):
            self._gone = None
            return
        if self._gone != named:
            self._gone = named  # look once more before taking it
            return
        self._gone = None
        if self.write(orphan=named):
            log.warning("the deploy that wrote %r's service info has no live worker left; "
                        "this worker's deploy (started %s) wrote it again",
                        self.registry.keys.name, self.deployed)


def _newer(theirs: str, ours: str) -> bool:
    try:
        return float(theirs) > float(ours)
    except ValueError:  # not a deploy any version wrote: ours replaces it
        return False
