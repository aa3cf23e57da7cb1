"""`fleet worker aggregate` as ECS runs it — real processes, real signals — sharing a 2-shard stream: a
SIGKILLed worker's shard is taken over from its last checkpoint without double counting, and a SIGTERMed one
hands its shard over at once instead of letting the lease expire."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.aggregate import zipf_events
from shared.kinesis.leases import LeaseStore
from shared.resources import LEASES
from shared.stage import Services
from tests.test_aggregate import FAST, lines, stored
from tests.test_aggregate_windows import want
from tests.test_kinesis import until
from tests.test_process import fleet_cmd, fleet_env, log_events, run_fleet
from workers.aggregate.resources import EVENTS_STREAM, METRICS
from workers.aggregate.submit import submit_events


class Worker:
    """One `fleet worker aggregate` process, its stderr collected line by line."""

    def __init__(self, services: Services, **env: str) -> None:
        self.lines: list[str] = []
        self.health_dir = f"{services.settings.health_dir}/{len(env)}-{id(self)}"
        env = {"FLEET_HEALTH_DIR": self.health_dir, **env}
        self.proc = subprocess.Popen(
            fleet_cmd("worker", "aggregate"),
            env=fleet_env(services.settings, **{"FLEET_DEFAULTS__WAIT_TIME_SECONDS": "1", **FAST, **env}),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        stderr = self.proc.stderr
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True)
        self._reader.start()

    @property
    def owner_prefix(self) -> str:
        return f":{self.proc.pid}:"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in log_events("".join(self.lines)) if e.get("event") == name]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@contextmanager
def workers(services: Services, *envs: dict[str, str]) -> Iterator[list[Worker]]:
    started = [Worker(services, **env) for env in envs]
    try:
        yield started
    finally:
        for w in started:
            w.close()


async def owners(services: Services) -> dict[str, str | None]:
    stream = services.settings.name_of(EVENTS_STREAM)
    shards = [s["ShardId"] for s in (await services.aws.kinesis.list_shards(StreamName=stream))["Shards"]]
    store = LeaseStore(services.aws.dynamodb, services.settings.name_of(LEASES), app="aggregate", stream=stream)
    return {shard: lease.owner for shard, lease in (await store.load(shards)).items()}


async def split_between(services: Services, a: Worker, b: Worker) -> dict[str, str]:
    """Wait until each worker holds one shard; returns shard -> worker name ("a" / "b")."""

    async def split() -> bool:
        held = await owners(services)
        return len(held) == 2 and sorted(_who(o, a, b) for o in held.values()) == ["a", "b"]

    await until(split, timeout=60, what="one shard each")
    return {shard: _who(owner, a, b) for shard, owner in (await owners(services)).items()}


def _who(owner: str | None, a: Worker, b: Worker) -> str:
    if owner and a.owner_prefix in owner:
        return "a"
    if owner and b.owner_prefix in owner:
        return "b"
    return "-"


async def counted_as(services: Services, events: list[dict[str, Any]], timeout: float = 90) -> None:
    expected = want(events)

    async def equal() -> bool:
        return await stored(services) == expected

    await until(equal, timeout=timeout, what="every entity equal to the reference")


async def test_a_sigkilled_workers_shard_is_taken_over_from_its_checkpoint_without_double_counting(
    fleet: Services,
) -> None:
    # Given two worker processes sharing the 2-shard stream; a never checkpoints, so when it dies every record
    # it has already written is read again by whoever takes its shard over: the worst moment to die
    events = zipf_events(random.Random(9), 600, entities=60, ids=0.5)
    with workers(fleet, {"FLEET_STREAM_CHECKPOINT_SECONDS": "300"}, {}) as (a, b):
        shards = await split_between(fleet, a, b)
        (a_shard,) = [s for s, who in shards.items() if who == "a"]
        await submit_events(fleet, lines(events[:400]), quiet=True)

        await until(lambda: watermarked(fleet, a_shard), timeout=60, what="a's first writes")

        # When a is killed (no drain, no hand-back) while events keep coming
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        await submit_events(fleet, lines(events[400:]), quiet=True)

        # Then b takes a's shard once its lease expires, from a's last checkpoint (none: the shard's start)
        await until(lambda: any(e.get("shard_id") == a_shard for e in b.events("lease taken")), 60, "take-over")
        (taken,) = [e for e in b.events("lease taken") if e.get("shard_id") == a_shard]
        assert a.owner_prefix in taken["from_owner"] and taken["checkpoint"] == "TRIM_HORIZON"

        # And every entity ends equal to the single-threaded reference: nothing a wrote is counted twice
        await counted_as(fleet, events)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(30) == 0


async def test_a_sigtermed_worker_hands_its_shard_over_without_waiting_for_expiry(fleet: Services) -> None:
    # Given two workers sharing the stream, with leases that would take a minute to expire
    slow = {"FLEET_STREAM_LEASE_SECONDS": "60", "FLEET_STREAM_RENEW_SECONDS": "0.5"}
    events = zipf_events(random.Random(10), 300, entities=40)
    with workers(fleet, slow, slow) as (a, b):
        shards = await split_between(fleet, a, b)
        (a_shard,) = [s for s, who in shards.items() if who == "a"]
        await submit_events(fleet, lines(events[:200]), quiet=True)
        await counted_as(fleet, events[:200])

        # (both consumers of each worker report in its health check)
        healthy = await run_fleet(fleet.settings, "health", "aggregate", FLEET_HEALTH_DIR=b.health_dir)
        assert healthy.returncode == 0 and "aggregate.stream: running" in healthy.stdout, healthy.stdout

        # When ECS sends a SIGTERM
        a.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert await asyncio.to_thread(a.proc.wait, 30) == 0

        # Then a released its lease as it stopped, and b holds both shards long before a lease could expire
        assert [e["shard_id"] for e in a.events("lease released")] == [a_shard]
        stopped_health = await run_fleet(fleet.settings, "health", "aggregate", FLEET_HEALTH_DIR=a.health_dir)
        assert stopped_health.returncode == 1 and "stopped" in stopped_health.stdout
        await until(lambda: any(e.get("shard_id") == a_shard for e in b.events("lease taken")), 30, "hand-over")
        assert time.monotonic() - stopped < 30
        assert all(b.owner_prefix in (owner or "") for owner in (await owners(fleet)).values())

        # And what comes next on a's shard is counted from where a stopped
        await submit_events(fleet, lines(events[200:]), quiet=True)
        await counted_as(fleet, events)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(30) == 0


async def watermarked(services: Services, shard: str) -> bool:
    """Some entity item holds a record of `shard`: a worker reading it has written effects."""
    mark = f"wm_{shard}"
    paginator = services.aws.dynamodb.get_paginator("scan")
    async for page in paginator.paginate(TableName=services.settings.name_of(METRICS), ConsistentRead=True):
        if any(mark in item for item in page.get("Items", [])):
            return True
    return False
