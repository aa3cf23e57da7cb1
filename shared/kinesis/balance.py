"""Which leases to take: pure decisions, as KCL makes them, testable without an emulator.

- A shard is *eligible* when its lease is not finished and each of its parents is finished (KCL's rule: a
  child is read only after its parent, so a key's records stay in order across a reshard). A parent that
  no longer exists in the stream (trimmed) counts as finished.
- The workers are the owners of live leases, plus me. Each should hold ceil(eligible / workers).
- Below my share I take free or expired leases first; if none is left, I steal one lease from the most
  loaded worker when it holds more than its share. One steal per round keeps the fleet from flapping.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shared.kinesis.leases import Lease


@dataclass(frozen=True)
class Plan:
    take: tuple[str, ...] = ()
    steal: str | None = None


class ExpiryWatch:
    """Judges expiry on the observer's own clock: a lease whose owner and counter have not changed for
    `lease_seconds` since this watcher first saw them is expired. Clocks of different machines never meet."""

    def __init__(self, lease_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._seen: dict[str, tuple[str | None, int, float]] = {}

    def expired(self, leases: Mapping[str, Lease]) -> set[str]:
        now = self._clock()
        out = set()
        for shard_id, lease in leases.items():
            seen = self._seen.get(shard_id)
            if seen is None or seen[:2] != (lease.owner, lease.counter):
                self._seen[shard_id] = (lease.owner, lease.counter, now)
            elif lease.owner is not None and now - seen[2] >= self.lease_seconds:
                out.add(shard_id)
        return out


def eligible(leases: Mapping[str, Lease], listed: set[str]) -> list[str]:
    def parent_done(parent: str) -> bool:
        lease = leases.get(parent)
        return lease.finished if lease is not None else parent not in listed

    return sorted(
        shard_id
        for shard_id, lease in leases.items()
        if not lease.finished and all(parent_done(p) for p in lease.parents)
    )


def plan(me: str, leases: Mapping[str, Lease], expired: set[str], listed: set[str]) -> Plan:
    shards = eligible(leases, listed)
    live = {s: leases[s].owner for s in shards if leases[s].owner is not None and s not in expired}
    load = Counter(owner for owner in live.values() if owner != me)
    mine = sum(1 for owner in live.values() if owner == me)
    workers = len(load) + 1
    share = math.ceil(len(shards) / workers) if shards else 0
    need = share - mine
    if need <= 0:
        return Plan()
    free = [s for s in shards if s not in live]
    # Workers looking at the same free leases at once should not all race for the first one.
    free.sort(key=lambda s: hashlib.sha1(f"{me}/{s}".encode()).hexdigest())
    if free:
        return Plan(take=tuple(free[:need]))
    if not load:
        return Plan()
    victim, held = max(sorted(load.items()), key=lambda kv: kv[1])
    if held <= share:
        return Plan()
    theirs = sorted(s for s, owner in live.items() if owner == victim)
    return Plan(steal=theirs[-1])
