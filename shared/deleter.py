"""Batched `DeleteMessageBatch`: successes from concurrent handlers share calls of up to 10 entries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("fleet.runtime")

SQS_BATCH = 10


class BatchDeleter:
    """`await deleter.delete(receipt)` returns once the message is deleted (or the delete failed for good).

    A delete waits at most `linger` seconds for companions; a full batch goes at once, and batches are sent
    concurrently. Waiting costs one timer per batch, not a task per message.
    """

    def __init__(self, sqs: SQSClient, queue_url: str, *, linger: float = 0.02) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._linger = linger
        self._waiting: list[tuple[str, asyncio.Future[bool]]] = []
        self._arrived: asyncio.Future[None] | None = None  # set when the first delete of a batch arrives
        self._full: asyncio.Future[None] | None = None  # set when a batch fills up
        self._flushing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0
        self.failed = 0
        self.calls = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-deleter")

    async def delete(self, receipt_handle: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((receipt_handle, future))
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if len(self._waiting) >= SQS_BATCH and self._full is not None and not self._full.done():
            self._full.set_result(None)
        return await future

    async def close(self, within: float = 10.0) -> None:
        """Flush what is queued, then stop; gives up after `within` seconds (ECS will not wait forever)."""
        if self._task is None:
            return
        outstanding = [f for _, f in self._waiting] + list(self._flushing)
        if outstanding:
            await asyncio.wait(outstanding, timeout=within)
        if self._waiting or self._flushing:
            log.error(
                "deletes still pending at shutdown; those messages will be delivered again",
                extra={"pending": len(self._waiting) + len(self._flushing), "timeout_s": within},
            )
        self._task.cancel()
        for flush in list(self._flushing):
            flush.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.gather(*self._flushing, return_exceptions=True)
        for _, future in self._waiting:
            if not future.done():
                future.set_result(False)
        self._waiting.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._arrived = loop.create_future()
                await self._arrived
            if len(self._waiting) < SQS_BATCH:
                self._full = loop.create_future()
                await asyncio.wait([self._full], timeout=self._linger)
            batch, self._waiting = self._waiting[:SQS_BATCH], self._waiting[SQS_BATCH:]
            flush = asyncio.create_task(self._send(batch))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushing.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[bool]]]) -> None:
        try:
            await self._flush(batch)
        finally:
            for _, future in batch:
                if not future.done():  # cancelled mid-flush (close timed out): report it as not deleted
                    future.set_result(False)

    async def _flush(self, batch: list[tuple[str, asyncio.Future[bool]]]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": handle} for i, (handle, _) in enumerate(batch)]
        self.calls += 1
        try:
            resp = await self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)  # type: ignore[arg-type]
            failed: dict[str, Any] = {f["Id"]: f for f in resp.get("Failed", [])}
        except Exception as exc:
            log.warning("delete batch failed; retrying one by one", extra={"error": str(exc)})
            failed = {e["Id"]: {"Id": e["Id"], "Message": str(exc)} for e in entries}
        for i, (handle, future) in enumerate(batch):
            ok = str(i) not in failed or await self._delete_one(handle, str(failed[str(i)].get("Message", "")))
            self.deleted += ok
            self.failed += not ok
            if not future.done():
                future.set_result(ok)

    async def _delete_one(self, handle: str, first_error: str) -> bool:
        try:
            await self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=handle)
            return True
        except Exception as exc:
            # The message will be delivered again after its visibility timeout: handlers are idempotent.
            log.error("delete failed; message will be redelivered", extra={"error": f"{first_error}; {exc}"})
            return False
