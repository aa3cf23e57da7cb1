"""The runtime's own demo step: good, slow, failing and malformed messages through the echo worker."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.app import open_services, run_workers, send_job
from shared.dlq import peek
from shared.resources import DeadLetters
from shared.settings import FleetSettings
from workers.echo import ECHO


async def demo(settings: FleetSettings, console: Console) -> None:
    # Short backoff so the always-failing message reaches the DLQ in seconds, not minutes.
    tuned = {"backoff_base": 1, "max_attempts": 3, "concurrency": 4, "burst_idle_seconds": 1}
    settings = settings.model_copy(update={"workers": {**settings.workers, "echo": tuned}})
    async with open_services(settings) as services:
        jobs: dict[str, str] = {}
        for text in ("hello", "from", "fleet"):
            jobs[text] = await send_job(services, ECHO, {"text": text}, kind="echo", terminal="echo")
        jobs["slow (3 s)"] = await send_job(services, ECHO, {"text": "slow", "sleep": 3}, kind="echo", terminal="echo")
        jobs["always retries"] = await send_job(
            services, ECHO, {"text": "x", "fail": "retry"}, kind="echo", terminal="echo"
        )
        jobs["fatal"] = await send_job(services, ECHO, {"text": "x", "fail": "fatal"}, kind="echo", terminal="echo")
        sqs = services.aws.sqs
        url = (await sqs.get_queue_url(QueueName=settings.name_of(ECHO)))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"txet": "typo"}))
        await sqs.send_message(QueueUrl=url, MessageBody="not json at all")
        console.print(f"submitted {len(jobs)} echo jobs + 2 malformed messages to {settings.name_of(ECHO)}")

    stats = (await run_workers(settings, ["echo"], burst=True))["echo"]
    console.print(
        f"echo worker (burst): received {stats.received}, succeeded {stats.succeeded}, "
        f"retried {stats.retried}, dead-lettered {stats.dead_lettered}"
    )

    async with open_services(settings) as services:
        table = Table("job", "id", "final", "history")
        for label, job_id in jobs.items():
            job: dict[str, Any] = await services.jobs.get(job_id) or {}
            history = job.get("history", [])
            final = history[-1]["status"] if history else "-"
            table.add_row(label, job_id[:8], final, " → ".join(h["status"] for h in history[1:]))
        console.print(table)
        dlq_url = await sqs_url(services, settings.name_of(DeadLetters.of(ECHO)))
        dead = Table("dead letter (fleet dlq echo)", "code", "reason")
        for d in await peek(services.aws.sqs, dlq_url):
            dead.add_row(d.body[:32], d.code, d.error[:70])
        console.print(dead)


async def sqs_url(services: Any, name: str) -> str:
    return str((await services.aws.sqs.get_queue_url(QueueName=name))["QueueUrl"])
