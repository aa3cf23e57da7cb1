"""Scale-in protection: a task whose handler runs past the drain timeout asks the ECS agent (a local
server implementing the documented endpoint) to protect it, and drops that when the handler settles."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator

import pytest

from shared.protection import AGENT_ENV, ProtectionMiddleware, TaskProtection
from shared.runtime import Worker
from shared.stage import Context, Services
from tests.ecs_agent import EcsAgent
from tests.helpers import Job, ScriptedStage, drain_queue, fast_tuning, queue_urls, send
from workers.echo import ECHO


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcsAgent]:
    with EcsAgent() as running:
        monkeypatch.setenv(AGENT_ENV, running.uri)
        yield running


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def held_until_released(*ns: int) -> tuple[ScriptedStage, dict[int, asyncio.Event]]:
    """A stage whose messages numbered `ns` run until the test releases them."""
    gates = {n: asyncio.Event() for n in ns}

    async def behaviour(job: Job, ctx: Context) -> None:
        if job.n in gates:
            await gates[job.n].wait()

    return ScriptedStage(behaviour), gates


def switches(agent: EcsAgent) -> list[bool]:
    return [enabled for _, enabled, _ in agent.state.history]


async def test_a_handler_running_past_the_drain_timeout_protects_the_task_until_the_last_one_settles(
    fleet: Services, agent: EcsAgent
) -> None:
    # Given two long messages and a quick one, on a worker that drains for 0.5 s
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}, {"n": 2}, {"n": 3}])
    stage, gates = held_until_released(1, 3)
    worker = await Worker.create(stage, fleet, queue=ECHO, tuning=fast_tuning(drain_timeout=0.5), burst=True)
    running = asyncio.create_task(worker.run())

    # When the long ones run past the drain timeout, Then the task is protected, for 30 minutes
    await wait_until(lambda: agent.state.enabled)
    assert agent.state.history[0][1:] == (True, 30)
    # When one of them settles, Then the other still holds the protection
    gates[1].set()
    await wait_until(lambda: worker.stats.succeeded == 2)
    assert agent.state.enabled
    # When the last one settles, Then protection is dropped: once on, once off, nothing in between
    gates[3].set()
    await asyncio.wait_for(running, 60)
    assert switches(agent) == [True, False]
    assert worker.stats.succeeded == 3


async def test_a_sigterm_during_a_protected_job_still_drains_and_releases_it(fleet: Services, agent: EcsAgent) -> None:
    # Given a protected task working on a job that will not finish within the drain
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}, {"n": 2}])
    stage, _ = held_until_released(1)
    worker = await Worker.create(stage, fleet, queue=ECHO, tuning=fast_tuning(drain_timeout=1.0))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)  # as `fleet worker` installs it (shared/app.py)
    running = asyncio.create_task(worker.run())
    await wait_until(lambda: agent.state.enabled and worker.stats.succeeded == 1)

    # When the task gets SIGTERM (a Spot interruption or a StopTask: protection does not stop those)
    os.kill(os.getpid(), signal.SIGTERM)
    try:
        stats = await asyncio.wait_for(running, 30)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)

    # Then the job had its drain time, was released for another task at once, and protection dropped
    # (a poll still open at the stop may receive the released copy and release it once more)
    assert stats.succeeded == 1 and stats.released >= 1
    assert switches(agent) == [True, False]
    (back,) = await drain_queue(fleet, url)
    assert '"n": 1' in back["Body"]


async def test_an_agent_that_refuses_protection_changes_no_message_fate(
    fleet: Services, agent: EcsAgent, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an agent that refuses (ECS answers TASK_NOT_VALID for a task outside a service)
    agent.state.refuse = "TASK_NOT_VALID"
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    stage, gates = held_until_released(1)
    worker = await Worker.create(stage, fleet, queue=ECHO, tuning=fast_tuning(drain_timeout=0.2), burst=True)
    running = asyncio.create_task(worker.run())
    # When the long handler asks for protection and is refused
    await wait_until(lambda: agent.state.requests >= 1)
    gates[1].set()
    await asyncio.wait_for(running, 60)
    # Then the message still succeeds, and the refusal is logged with ECS's reason
    assert worker.stats.succeeded == 1
    refused = [r for r in caplog.records if r.getMessage() == "task protection refused"]
    assert refused and refused[0].reason == "TASK_NOT_VALID"  # type: ignore[attr-defined]


async def test_protection_is_renewed_while_held_and_requests_follow_the_documented_shape(agent: EcsAgent) -> None:
    # Given a protection that expires in a minute and renews every 0.1 s
    protection = TaskProtection(agent.uri, expires_minutes=1, renew_seconds=0.1)
    # When it is held for a while, Then it is renewed, each time for its full expiry
    await protection.acquire()
    await wait_until(lambda: len(agent.state.history) >= 3)
    await protection.release()
    assert switches(agent)[-1] is False and set(switches(agent)[:-1]) == {True}
    assert {minutes for _, enabled, minutes in agent.state.history if enabled} == {1}
    assert protection.protected is False and protection.holders == 0


async def test_outside_ecs_nothing_is_asked(
    fleet: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given no ECS agent (no ECS_AGENT_URI: a laptop, compose, CI)
    monkeypatch.delenv(AGENT_ENV, raising=False)
    assert ProtectionMiddleware().protection is None
    # When a handler runs past the drain timeout, Then it just runs
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1, "sleep": 0.3}])
    caplog.set_level(logging.DEBUG, logger="fleet.protection")
    worker = await Worker.create(ScriptedStage(), fleet, queue=ECHO, tuning=fast_tuning(drain_timeout=0), burst=True)
    await asyncio.wait_for(worker.run(), 60)
    assert worker.stats.succeeded == 1
    assert not [r for r in caplog.records if r.name == "fleet.protection"]
