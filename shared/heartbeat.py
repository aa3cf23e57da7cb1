"""Keeping in-flight messages hidden while their handlers run.

One loop per worker extends every tracked message's visibility each `interval`, ten to a
`ChangeMessageVisibilityBatch` call. Three promises:

- `forget(message)` returns only once no extension of that message can still reach SQS: a settle that
  follows it (a 2 s retry, a release at shutdown) is never overwritten by a late extension;
- no extension asks for more than SQS allows: a message is hidden at most 12 h after it was received;
- a message SQS no longer lets us extend (`ReceiptHandleIsInvalid`, `MessageNotInflight`: deleted elsewhere,
  or delivered to someone else), or one we failed to extend before its visibility ran out, is reported
  through `on_lost`, so its handler is stopped instead of running on without its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import error_code
from shared.fate import visibility_left
from shared.stage import Message

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("fleet.runtime")

GONE = frozenset({"ReceiptHandleIsInvalid", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"})
SQS_BATCH = 10


@dataclass
class _Tracked:
    message: Message
    next_due: float  # monotonic
    hidden_until: float  # monotonic: when the last confirmed visibility runs out


class Heartbeat:
    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        *,
        visibility_timeout: int,
        interval: float,
        on_lost: Callable[[Message, str], None],
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._visibility = visibility_timeout
        self._interval = interval
        self._on_lost = on_lost
        self._tracked: dict[str, _Tracked] = {}  # by receipt handle
        self._in_flight: dict[str, asyncio.Future[None]] = {}  # receipt -> the batch call carrying it
        self._wake = asyncio.Event()
        self._waking_at: float | None = None  # when the loop will look again (None: when woken)
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-heartbeat")

    def track(self, message: Message) -> None:
        now = time.monotonic()
        hidden = now + self._visibility - max(0.0, time.time() - message.received_at)
        self._tracked[message.receipt_handle] = _Tracked(message, now + self._interval, hidden)
        if self._waking_at is None or now + self._interval < self._waking_at:
            self._wake.set()  # (the common case, a loop already due to look earlier, costs nothing)

    async def forget(self, message: Message) -> None:
        """Stop extending `message`, and wait until no extension of it is still on its way to SQS."""
        self._tracked.pop(message.receipt_handle, None)
        pending = self._in_flight.get(message.receipt_handle)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:
            await asyncio.gather(*set(self._in_flight.values()), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._tracked:
                self._wake.clear()
                self._waking_at = None
                await self._wake.wait()
                continue
            now = time.monotonic()
            self._report_expired(now)
            earliest = min((t.next_due for t in self._tracked.values()), default=now + self._interval)
            if earliest > now:
                self._wake.clear()
                self._waking_at = earliest
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), earliest - now)
                continue
            # Everything due soon goes in the same calls: fewer requests, same protection.
            due = [t for t in self._tracked.values() if t.next_due <= now + self._interval / 4]
            for t in due:
                t.next_due = now + self._interval
            for start in range(0, len(due), SQS_BATCH):
                call = asyncio.ensure_future(self._extend(due[start : start + SQS_BATCH]))
                for t in due[start : start + SQS_BATCH]:
                    self._in_flight[t.message.receipt_handle] = call
                call.add_done_callback(self._done)

    def _done(self, call: asyncio.Future[None]) -> None:
        for receipt in [r for r, f in self._in_flight.items() if f is call]:
            del self._in_flight[receipt]

    def _report_expired(self, now: float) -> None:
        for receipt, t in list(self._tracked.items()):
            if now >= t.hidden_until:
                del self._tracked[receipt]
                self._on_lost(t.message, "its visibility ran out before it could be extended")

    async def _extend(self, batch: list[_Tracked]) -> None:
        entries: list[Any] = []
        for i, t in enumerate(batch):
            seconds = min(self._visibility, math.floor(visibility_left(t.message.received_at, time.time())))
            if seconds >= 1:
                entries.append({"Id": str(i), "ReceiptHandle": t.message.receipt_handle, "VisibilityTimeout": seconds})
        if not entries:
            return
        sent = time.monotonic()
        self.calls += 1
        try:
            resp = await self._sqs.change_message_visibility_batch(QueueUrl=self._url, Entries=entries)
        except Exception as exc:
            # The message stays hidden until its current visibility runs out; the next beat tries again.
            log.warning("visibility heartbeat failed", extra={"error": str(exc), "code": error_code(exc)})
            return
        failed = {f["Id"]: f for f in resp.get("Failed", [])}
        for entry in entries:
            t = batch[int(entry["Id"])]
            failure = failed.get(entry["Id"])
            if failure is None:
                t.hidden_until = sent + entry["VisibilityTimeout"]
            elif failure.get("Code") in GONE and t.message.receipt_handle in self._tracked:
                del self._tracked[t.message.receipt_handle]
                self._on_lost(t.message, f"SQS says {failure.get('Code')}: {failure.get('Message', '')}".strip())
            else:
                log.warning(
                    "visibility heartbeat failed for one message",
                    extra={"error": failure.get("Message", ""), "code": failure.get("Code", "")},
                )
