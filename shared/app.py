"""Wiring: open the process's long-lived services and run one or more workers on them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from shared.clients import AwsClients
from shared.jobs import JobStore, new_job_id
from shared.metrics import Metrics
from shared.runtime import RunStats, Worker
from shared.settings import FleetSettings
from shared.stage import JOB_ID_ATTRIBUTE, Services

log = logging.getLogger("fleet")


@contextlib.asynccontextmanager
async def open_services(settings: FleetSettings, *, pool_size: int = 20) -> AsyncIterator[Services]:
    async with AwsClients(settings, pool_size=pool_size, read_timeout=settings.defaults.wait_time_seconds + 40) as aws:
        metrics = Metrics(
            settings.metrics_mode,
            settings.metrics_namespace,
            cloudwatch=aws.cloudwatch if settings.metrics_mode == "cloudwatch" else None,
        )
        services = Services(
            settings=settings, aws=aws, metrics=metrics, jobs=JobStore(aws.dynamodb, settings.table("jobs"))
        )
        try:
            yield services
        finally:
            await metrics.flush()


async def run_workers(
    settings: FleetSettings,
    names: Sequence[str],
    *,
    burst: bool = False,
    install_signals: bool = True,
    stop: asyncio.Event | None = None,
    on_started: Callable[[], None] | None = None,
) -> dict[str, RunStats]:
    """Run the named workers in this process until they stop (SIGTERM/SIGINT, `stop`, or burst end)."""
    from workers import load_stage

    pool = sum(settings.tuning(n).pool_size for n in names)
    async with open_services(settings, pool_size=pool) as services:
        workers = [
            await Worker.create(load_stage(name, services), services, burst=burst, install_signals=False)
            for name in names
        ]
        loop = asyncio.get_running_loop()
        signals_installed = []
        if install_signals:
            import signal

            def stop_all() -> None:
                for w in workers:
                    w.stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop_all)
                signals_installed.append(sig)
        watcher = None
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                for w in workers:
                    w.stop()

            watcher = asyncio.create_task(watch())
        if on_started:
            on_started()
        try:
            results = await asyncio.gather(*(w.run() for w in workers))
        finally:
            for sig in signals_installed:
                loop.remove_signal_handler(sig)
            if watcher:
                watcher.cancel()
        return {w.name: r for w, r in zip(workers, results, strict=True)}


async def send_job(
    services: Services,
    queue_key: str,
    body: dict[str, Any],
    *,
    kind: str,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> str:
    """Record a job in fleet-jobs and put its message on the queue, tagged with its job id."""
    job_id = job_id or new_job_id()
    await services.jobs.create(job_id, kind, detail)
    sqs = services.aws.sqs
    url = (await sqs.get_queue_url(QueueName=services.settings.queue(queue_key)))["QueueUrl"]
    await sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(body),
        MessageAttributes={JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": job_id}},
    )
    return job_id
