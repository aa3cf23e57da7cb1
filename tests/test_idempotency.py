"""The idempotency guard over the real DynamoDB API."""

from __future__ import annotations

import asyncio

import pytest

from shared.idempotency import AlreadyInProgress, Idempotency
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
    # Given a caller that "crashed" mid-way: its IN_PROGRESS record stays, with a 1 s lease
    crashed = asyncio.create_task(guard(fleet).run("k2", asyncio.Event().wait, lease_seconds=1))
    await asyncio.sleep(0.3)
    crashed.cancel()  # a cancelled caller releases its record; simulate a hard crash by re-writing it
    with pytest.raises(asyncio.CancelledError):
        await crashed
    await fleet.aws.dynamodb.put_item(
        TableName=fleet.settings.name_of(LEASES),
        Item={
            "pk": {"S": "k2"},
            "status": {"S": "IN_PROGRESS"},
            "token": {"S": "dead"},
            "lease_expires": {"N": "0"},
        },
    )

    # When another caller comes after the lease expired
    async def effect() -> str:
        return "recovered"

    # Then it takes over instead of being blocked
    assert await guard(fleet).run("k2", effect, lease_seconds=30) == "recovered"


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
