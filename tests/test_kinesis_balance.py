"""Lease decisions (shared/kinesis/balance.py): pure functions, no emulator."""

from __future__ import annotations

from shared.kinesis.balance import ExpiryWatch, eligible, plan
from shared.kinesis.leases import SHARD_END, TRIM_HORIZON, Lease


def lease(
    shard: str, owner: str | None = None, counter: int = 0, checkpoint: str = "5", parents: tuple[str, ...] = ()
) -> Lease:
    return Lease(shard, owner, counter, checkpoint, parents)


def leases(*items: Lease) -> dict[str, Lease]:
    return {i.shard_id: i for i in items}


def test_a_lone_worker_takes_every_free_lease() -> None:
    # Given two free leases
    known = leases(lease("s0"), lease("s1"))
    # When a worker plans, Then it takes both
    assert sorted(plan("a", known, set(), {"s0", "s1"}).take) == ["s0", "s1"]


def test_a_new_worker_steals_one_lease_from_a_worker_holding_more_than_its_share() -> None:
    # Given worker a holds both shards
    known = leases(lease("s0", "a"), lease("s1", "a"))
    # When b plans, Then it steals exactly one (its share), and a has nothing to take
    decided = plan("b", known, set(), {"s0", "s1"})
    assert decided.take == () and decided.steal in ("s0", "s1")
    assert plan("a", known, set(), {"s0", "s1"}).steal is None


def test_balanced_workers_leave_each_other_alone() -> None:
    # Given 3 shards over 2 workers (2 + 1): the share is 2, so the worker with 1 does not steal
    known = leases(lease("s0", "a"), lease("s1", "a"), lease("s2", "b"))
    assert plan("b", known, set(), {"s0", "s1", "s2"}) == plan("b", {}, set(), set())


def test_expired_leases_are_free_and_their_dead_owner_no_longer_counts() -> None:
    # Given a's lease on s0 has expired and b holds s1
    known = leases(lease("s0", "a"), lease("s1", "b"))
    # When b plans, Then it takes s0: a is not a live worker any more, so b's share is both shards
    assert plan("b", known, {"s0"}, {"s0", "s1"}).take == ("s0",)


def test_a_child_shard_waits_until_its_parent_is_finished() -> None:
    # Given a parent being read and its two children
    parent = lease("s0", "a", checkpoint="42")
    children = [
        lease("s1", parents=("s0",), checkpoint=TRIM_HORIZON),
        lease("s2", parents=("s0",), checkpoint=TRIM_HORIZON),
    ]
    # Then only the parent is eligible
    assert eligible(leases(parent, *children), {"s0", "s1", "s2"}) == ["s0"]
    # And once the parent's checkpoint is SHARD_END, the children are, and the parent is not
    done = lease("s0", None, checkpoint=SHARD_END)
    assert eligible(leases(done, *children), {"s0", "s1", "s2"}) == ["s1", "s2"]
    # A parent trimmed from the stream (no lease, not listed) counts as finished
    assert eligible(leases(*children), {"s1", "s2"}) == ["s1", "s2"]


def test_expiry_is_judged_on_the_observers_clock_from_an_unchanged_counter() -> None:
    now = [100.0]
    watch = ExpiryWatch(10, clock=lambda: now[0])
    held = leases(lease("s0", "a", counter=3))
    # Given a lease first seen now: not expired, however old it really is
    assert watch.expired(held) == set()
    # When its counter does not move for the lease duration, Then it is expired
    now[0] = 109.9
    assert watch.expired(held) == set()
    now[0] = 110.0
    assert watch.expired(held) == {"s0"}
    # And a renewal (the counter moved) makes it live again, for another full duration
    renewed = leases(lease("s0", "a", counter=4))
    assert watch.expired(renewed) == set()
    now[0] = 115.0
    assert watch.expired(renewed) == set()
    # A free lease is never "expired": it is simply free
    assert watch.expired(leases(lease("s1"))) == set()
