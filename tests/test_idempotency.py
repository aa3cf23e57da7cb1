"""The idempotency guard over the real DynamoDB API."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.idempotency import AlreadyInProgress, Idempotency, LeaseLost
from shared.resources import LEASES
from shared.stage import Services


def guard(fleet: Services) -> Idempotency:
    return Idempotency(fleet.aws.dynamodb, fleet.settings.name_of(LEASES))


async def test_a_side_effect_runs_once_and_later_callers_get_its_result(fleet: Services) -> None:
    # Given a guarded side effect
    runs = []

    async def effect() -> dict[str, int]:
        runs.append(1)
        return {"sent": len(runs)}

    # When it is called twice with the same key
    first = await guard(fleet).run("notify#1", effect, lease_seconds=30)
    second = await guard(fleet).run("notify#1", effect, lease_seconds=30)

    # Then it ran once, and the second caller got the stored result
    assert runs == [1]
    assert first == second == {"sent": 1}


async def test_a_concurrent_caller_is_told_to_retry_later(fleet: Services) -> None:
    # Given one caller in the middle of the side effect
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    first = asyncio.create_task(guard(fleet).run("k", slow, lease_seconds=30))
    await started.wait()

    # When a second caller arrives, Then it is asked to retry after the remaining lease
    with pytest.raises(AlreadyInProgress) as err:
        await guard(fleet).run("k", slow, lease_seconds=30)
    assert err.value.delay is not None and 25 < err.value.delay <= 30
    release.set()
    assert await first == "done"


async def test_a_crashed_callers_lease_expires_and_is_taken_over(fleet: Services) -> None:
    # Given a caller that was cancelled mid-way (a drain, a timeout): its side effect may have happened
    crashed = asyncio.create_task(guard(fleet).run("k2", asyncio.Event().wait, lease_seconds=1))
    await asyncio.sleep(0.3)
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed

    async def effect() -> str:
        return "recovered"

    # When another caller comes at once, Then its record still holds the key
    with pytest.raises(AlreadyInProgress):
        await guard(fleet).run("k2", effect, lease_seconds=30)

    # When another caller comes after the 1 s lease ran out, Then it takes over instead of being blocked
    await asyncio.sleep(1.2)
    assert await guard(fleet).run("k2", effect, lease_seconds=30) == "recovered"


async def test_a_side_effect_longer_than_its_lease_runs_once_while_its_holder_lives(fleet: Services) -> None:
    # Given a 3 s side effect under a 2 s lease
    runs: list[float] = []

    async def slow() -> str:
        runs.append(time.monotonic())
        await asyncio.sleep(3)
        return "sent"

    first = asyncio.create_task(guard(fleet).run("long", slow, lease_seconds=2))

    # When a second delivery of the same key arrives 2.5 s later (after the first lease would have run out)
    await asyncio.sleep(2.5)
    with pytest.raises(AlreadyInProgress):
        await guard(fleet).run("long", slow, lease_seconds=2)

    # Then the holder renewed its lease: the side effect ran once, and completed
    assert await first == "sent"
    assert len(runs) == 1
    assert await guard(fleet).run("long", slow, lease_seconds=2) == "sent"
    assert len(runs) == 1


async def test_a_holder_that_loses_its_lease_learns_it_before_reporting_success(fleet: Services) -> None:
    # Given a holder in the middle of its side effect, with a 1 s lease
    finished: list[bool] = []

    async def slow() -> str:
        await asyncio.sleep(3)
        finished.append(True)
        return "sent"

    holder = asyncio.create_task(guard(fleet).run("stolen", slow, lease_seconds=1))
    await asyncio.sleep(0.2)

    # When another worker's token replaces its own (its lease was taken over)
    await fleet.aws.dynamodb.update_item(
        TableName=fleet.settings.name_of(LEASES),
        Key={"pk": {"S": "stolen"}},
        UpdateExpression="SET #t = :other",
        ExpressionAttributeNames={"#t": "token"},
        ExpressionAttributeValues={":other": {"S": "someone-else"}},
    )

    # Then its next renewal finds out: the side effect is stopped and the caller told, not given success
    with pytest.raises(LeaseLost, match="another worker holds the lease"):
        await asyncio.wait_for(holder, 10)
    assert finished == []


async def test_a_failed_side_effect_can_be_retried(fleet: Services) -> None:
    # Given a side effect that fails the first time
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("SNS down")
        return "ok"

    # When it is called, fails, and is called again
    with pytest.raises(RuntimeError):
        await guard(fleet).run("k3", flaky, lease_seconds=30)
    result = await guard(fleet).run("k3", flaky, lease_seconds=30)

    # Then the second call ran it again
    assert result == "ok" and len(calls) == 2
