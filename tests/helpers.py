"""Test helpers: a stage whose behaviour each test scripts, and queue utilities over the real emulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.app import open_services
from shared.resources import DeadLetters, Queue
from shared.runtime import Worker
from shared.settings import WorkerTuning
from shared.stage import Context, Services, parse_body
from tests.faultproxy import FaultProxy
from workers.echo import ECHO


class Job(BaseModel):
    n: int
    sleep: float = 0.0


@dataclass
class ScriptedStage:
    """Records every call; `behaviour` decides what each call does."""

    behaviour: Callable[[Job, Context], Awaitable[None]] | None = None
    name: str = "echo"
    calls: list[tuple[int, int, float]] = field(default_factory=list)  # (n, attempt, monotonic time)
    running: int = 0
    max_running: int = 0

    def parse(self, body: str) -> Job:
        return parse_body(Job, body)

    async def handle(self, message: Job, ctx: Context) -> None:
        self.calls.append((message.n, ctx.attempt, time.monotonic()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if message.sleep:
                await asyncio.sleep(message.sleep)
            if self.behaviour is not None:
                await self.behaviour(message, ctx)
        finally:
            self.running -= 1


def fast_tuning(**overrides: Any) -> WorkerTuning:
    base: dict[str, Any] = {
        "concurrency": 10,
        "wait_time_seconds": 1,
        "visibility_timeout": 30,
        "backoff_base": 1,
        "drain_timeout": 5,
        "burst_idle_seconds": 0.5,
    }
    return WorkerTuning(**{**base, **overrides})


async def queue_urls(services: Services, queue: Queue = ECHO) -> tuple[str, str]:
    sqs = services.aws.sqs
    url = (await sqs.get_queue_url(QueueName=services.settings.name_of(queue)))["QueueUrl"]
    dlq = (await sqs.get_queue_url(QueueName=services.settings.name_of(DeadLetters.of(queue))))["QueueUrl"]
    return url, dlq


async def send(services: Services, url: str, bodies: list[Any]) -> None:
    sqs = services.aws.sqs
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": b if isinstance(b, str) else json.dumps(b)}
            for i, b in enumerate(bodies[start : start + 10])
        ]
        resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        assert not resp.get("Failed"), resp


async def drain_queue(services: Services, url: str, wait: int = 1) -> list[dict[str, Any]]:
    """Receive (and delete) everything visible now; returns the raw messages."""
    sqs = services.aws.sqs
    out: list[dict[str, Any]] = []
    while True:
        resp = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait, MessageAttributeNames=["All"]
        )
        batch = resp.get("Messages", [])
        if not batch:
            return out
        for m in batch:
            out.append(dict(m))
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


async def run_burst(
    stage: Any, services: Services, tuning: WorkerTuning, timeout: float = 60, queue: Queue = ECHO
) -> Worker:
    worker = await Worker.create(stage, services, queue=queue, tuning=tuning, burst=True)
    await asyncio.wait_for(worker.run(), timeout)
    return worker


@asynccontextmanager
async def through(proxy: FaultProxy, services: Services) -> AsyncIterator[Services]:
    """Services like `services`, whose every AWS call passes through `proxy`."""
    settings = services.settings.model_copy(update={"endpoint_url": proxy.url})
    async with open_services(settings, pool_size=50) as proxied:
        yield proxied
