"""Wiring: open the process's long-lived services and run one or more workers on them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from shared.clients import AwsClients
from shared.declaration import WorkerSpec, load
from shared.jobs import JobStore, new_job_id
from shared.kinesis.consumer import StreamConsumer
from shared.metrics import Metrics
from shared.registry import Registry, discover
from shared.resources import JOBS, Queue
from shared.runtime import RunStats, Worker
from shared.settings import FleetSettings
from shared.stage import JOB_ID_ATTRIBUTE, Services, Stage

log = logging.getLogger("fleet")


@contextlib.asynccontextmanager
async def open_services(settings: FleetSettings, *, pool_size: int = 20) -> AsyncIterator[Services]:
    async with AwsClients(settings, pool_size=pool_size, read_timeout=settings.defaults.wait_time_seconds + 40) as aws:
        mode = "emf" if settings.metrics_mode == "auto" else settings.metrics_mode  # (resolved by the settings)
        metrics = Metrics(mode, settings.metrics_namespace, cloudwatch=aws.cloudwatch if mode == "cloudwatch" else None)
        services = Services(
            settings=settings, aws=aws, metrics=metrics, jobs=JobStore(aws.dynamodb, settings.name_of(JOBS))
        )
        metrics.start()
        try:
            yield services
        finally:
            await metrics.close()


def load_stage(spec: WorkerSpec, services: Services) -> Stage[Any]:
    factory: Callable[[Services], Stage[Any]] = load(spec.stage)
    return factory(services)


async def run_workers(
    settings: FleetSettings,
    names: Sequence[str],
    *,
    burst: bool = False,
    install_signals: bool = True,
    stop: asyncio.Event | None = None,
    on_started: Callable[[], None] | None = None,
    registry: Registry | None = None,
) -> dict[str, RunStats]:
    """Run the named workers in this process until they stop (SIGTERM/SIGINT, `stop`, or burst end).

    A worker that declares a queue gets the SQS runtime; one that declares a stream gets the stream consumer
    (`shared.kinesis`, results keyed `<name>.stream`); one that declares both gets both, on one stage.

    Signals are handled here and only here: the first SIGTERM/SIGINT drains every worker, a second one
    stops them now."""
    registry = registry or discover()
    specs = registry.expand(names)
    pool = sum(registry.tuning(settings, spec.name).pool_size for spec in specs)
    async with open_services(settings, pool_size=pool) as services:
        workers: list[Worker | StreamConsumer] = []
        for spec in specs:
            if spec.queue is None and spec.stream is None:
                raise ValueError(f"worker {spec.name!r} consumes no queue and no stream")
            # One stage object per worker: a worker fed by a queue and a stream folds both in one place.
            stage = load_stage(spec, services)
            tuning = registry.tuning(settings, spec.name)
            if spec.queue is not None:
                workers.append(await Worker.create(stage, services, queue=spec.queue, tuning=tuning, burst=burst))
            if spec.stream is not None:
                workers.append(
                    await StreamConsumer.create(
                        stage,  # type: ignore[arg-type]
                        services,
                        stream=spec.stream,
                        dead_letters=spec.queue,
                        tuning=tuning,
                        burst=burst,
                    )
                )

        def stop_all() -> None:
            for w in workers:
                w.stop()

        with contextlib.ExitStack() as cleanup:
            if install_signals:
                cleanup.enter_context(on_signals(stop_all))
            if stop is not None:
                watcher = asyncio.create_task(_stop_when(stop, stop_all))
                cleanup.callback(watcher.cancel)
            if on_started:
                on_started()
            results = await asyncio.gather(*(w.run() for w in workers))
        return {w.name: r for w, r in zip(workers, results, strict=True)}


@contextlib.contextmanager
def on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` on SIGTERM and SIGINT while the block runs."""
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


async def _stop_when(event: asyncio.Event, callback: Callable[[], None]) -> None:
    await event.wait()
    callback()


async def send_job(
    services: Services,
    queue: Queue,
    body: dict[str, Any],
    *,
    kind: str,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
    terminal: str | None = None,
) -> str:
    """Record a job in fleet-jobs (granting `queue`) and put its message on the queue, tagged with its job id.
    `terminal`: the worker whose outcome is the job's final status (a one-stage job)."""
    job_id = job_id or new_job_id()
    name = services.settings.name_of(queue)
    await services.jobs.create(job_id, kind, detail, queue=name, terminal=terminal)
    sqs = services.aws.sqs
    url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    await sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(body),
        MessageAttributes={JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": job_id}},
    )
    return job_id
