"""`sync` (`fleet-sync`): authenticate, list the whole library page by page, and enqueue one `fleet-download`
job per media item that is not COMPLETED in `fleet-sync`.

Per page of 100: one BatchGetItem (100 keys) and ten SendMessageBatch calls (10 messages each), sent
concurrently — a library of 10,000 items costs about 100 listing calls, 100 reads and 1,000 sends, while
the next page is already being fetched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import Transient
from shared.stage import Context, Services, parse_body
from workers.media_sync.app import MediaSync
from workers.media_sync.models import ListedMedia, SyncRequest
from workers.media_sync.resources import DOWNLOAD_QUEUE

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

log = logging.getLogger("fleet.media_sync")

SEND_BATCH = 10
SEND_RETRIES = 3


@dataclass
class SyncReport:
    pages: int = 0
    listed: int = 0
    invalid: int = 0
    already_synced: int = 0
    enqueued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class SyncStage:
    name = "sync"

    def __init__(self, services: Services, media: MediaSync | None = None) -> None:
        self.services = services
        self.media = media or MediaSync.of(services)
        self._download_url: str | None = None

    def parse(self, body: str) -> SyncRequest:
        return parse_body(SyncRequest, body)

    async def handle(self, message: SyncRequest, ctx: Context) -> None:
        report = await self.sync()
        if ctx.job_id:
            await ctx.services.jobs.record_stage(ctx.job_id, "sync", "LISTED", queue=ctx.queue, **report.as_dict())

    async def sync(self) -> SyncReport:
        started = time.monotonic()
        report = SyncReport()
        config = self.media.config
        tasks: list[asyncio.Task[None]] = []
        window = asyncio.Semaphore(2)  # pages being checked and enqueued while the next is fetched
        sends = asyncio.Semaphore(config.send_concurrency)

        async def page_done(items: list[ListedMedia]) -> None:
            try:
                await self._enqueue_unsynced(items, report, sends)
            finally:
                window.release()

        try:
            async with self.media.provider() as provider:
                async for _, items, invalid in provider.pages(config.page_size):
                    report.pages += 1
                    report.listed += len(items)
                    report.invalid += invalid
                    await window.acquire()
                    _raise_failed(tasks)
                    tasks.append(asyncio.create_task(page_done(items)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if report.invalid:
            log.warning("listing entries skipped: invalid", extra={"invalid": report.invalid})
        log.info(
            "library synced", extra={**report.as_dict(), "duration_ms": round((time.monotonic() - started) * 1000)}
        )
        return report

    async def _enqueue_unsynced(self, items: list[ListedMedia], report: SyncReport, sends: asyncio.Semaphore) -> None:
        statuses = await self.media.store.statuses(i.id for i in items)
        todo = [i for i in {i.id: i for i in items}.values() if statuses.get(i.id) != "COMPLETED"]
        report.already_synced += len(items) - len(todo)
        batches = [todo[i : i + SEND_BATCH] for i in range(0, len(todo), SEND_BATCH)]

        async def send(batch: list[ListedMedia]) -> None:
            async with sends:
                await self._send(batch)
            report.enqueued += len(batch)

        await asyncio.gather(*(send(b) for b in batches))

    async def _send(self, batch: list[ListedMedia]) -> None:
        sqs = self.services.aws.sqs
        if self._download_url is None:
            name = self.services.settings.name_of(DOWNLOAD_QUEUE)
            self._download_url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(n), "MessageBody": json.dumps(_download_job(item))} for n, item in enumerate(batch)
        ]
        for attempt in range(1, SEND_RETRIES + 1):
            resp = await sqs.send_message_batch(QueueUrl=self._download_url, Entries=entries)
            failed = {f["Id"] for f in resp.get("Failed", [])}
            if not failed:
                return
            entries = [e for e in entries if e["Id"] in failed]
            await asyncio.sleep(0.2 * 2**attempt)
        raise Transient(f"{len(entries)} download jobs not enqueued after {SEND_RETRIES} tries", code="SQS_SEND")


def _download_job(item: ListedMedia) -> dict[str, Any]:
    return {"media_id": item.id, "filename": item.filename, "size": item.size}


def _raise_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
