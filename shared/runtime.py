"""The SQS runtime: one class that runs any stage.

Delivery is at-least-once, as SQS is; the runtime's promises are about what happens around a handler:

- long polls of up to 10, never more than `concurrency` messages in flight;
- a body that fails validation is poison: sent to the DLQ at once with `fleet.error`, then deleted;
- success deletes (batched); `Retry` or any unexpected error delays the message by exponential backoff
  through its visibility (never by sleeping), until `max_attempts`, then dead-letters it with the reason;
  `Fatal` dead-letters at once;
- while a handler runs its message's visibility is extended (heartbeat), so long jobs are not redelivered;
- on SIGTERM/SIGINT: stop receiving, let handlers finish for `drain_timeout`, then cancel them and make
  their messages visible again at once. The writes that settle a message are shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.backoff import backoff_delay
from shared.deleter import BatchDeleter
from shared.errors import FleetError, Poison, Retry, Transient, classify
from shared.health import HealthState, write_health
from shared.logs import log_context
from shared.middleware import Middleware, Outcome, default_middleware
from shared.resources import DeadLetters, Queue
from shared.settings import WorkerTuning, ceil_seconds
from shared.stage import Context, Message, Services, Stage, Ticking

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageAttributeValueTypeDef, MessageTypeDef

log = logging.getLogger("fleet.runtime")

MAX_ATTRIBUTES = 10  # SQS limit per message
REASON_LIMIT = 1000


@dataclass
class RunStats:
    polls: int = 0
    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0


async def resolve_queue(services: Services, queue: Queue) -> tuple[str, str]:
    """The queue's URL and its DLQ's URL, read from the API (never built by hand)."""
    sqs = services.aws.sqs
    settings = services.settings
    url = (await sqs.get_queue_url(QueueName=settings.name_of(queue)))["QueueUrl"]
    dlq_url = (await sqs.get_queue_url(QueueName=settings.name_of(DeadLetters.of(queue))))["QueueUrl"]
    return url, dlq_url


class Worker:
    """Consume one queue with one stage until stopped (or, in burst mode, until the queue is empty)."""

    def __init__(
        self,
        stage: Stage[Any],
        services: Services,
        *,
        queue_url: str,
        dlq_url: str | None,
        tuning: WorkerTuning | None = None,
        burst: bool = False,
        install_signals: bool = True,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.stage = stage
        self.services = services
        self.name = stage.name
        self.tuning = tuning or services.settings.tuning(stage.name)
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.burst = burst
        self.install_signals = install_signals
        self.middleware = list(default_middleware() if middleware is None else middleware)
        self.stats = RunStats()
        self._sqs = services.aws.sqs
        self._deleter = BatchDeleter(self._sqs, queue_url)
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[Any]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._last_poll = time.time()
        self._status = "starting"
        self._tick_pending = False

    @classmethod
    async def create(cls, stage: Stage[Any], services: Services, *, queue: Queue, **kwargs: Any) -> Worker:
        url, dlq = await resolve_queue(services, queue)
        return cls(stage, services, queue_url=url, dlq_url=dlq, **kwargs)

    # --- lifecycle -------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Drain (default) or stop now: cancel in-flight handlers at once and release their messages."""
        if now or self._stopping.is_set():
            self._stop_now.set()
        if not self._stopping.is_set():
            log.info("stopping: draining in-flight messages", extra={"in_flight": len(self._tasks)})
        self._stopping.set()

    async def run(self) -> RunStats:
        loop = asyncio.get_running_loop()
        if self.install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        self._deleter.start()
        health = asyncio.create_task(self._health_loop(), name="fleet-health")
        ticker = asyncio.create_task(self._tick_loop()) if isinstance(self.stage, Ticking) else None
        with log_context(worker=self.name):
            log.info(
                "worker started",
                extra={
                    "queue": self.queue_url.rsplit("/", 1)[-1],
                    "concurrency": self.tuning.concurrency,
                    "burst": self.burst,
                },
            )
            try:
                self._status = "running"
                await self._receive_loop()
            finally:
                self._status = "draining"
                if ticker:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                await self._drain()
                await self._deleter.close()
                await self.services.metrics.flush()
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
                self._status = "stopped"
                self._write_health()
                if self.install_signals:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)
                log.info("worker stopped", extra=vars(self.stats))
        return self.stats

    # --- receiving -------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        idle_since: float | None = None
        while not self._stopping.is_set():
            free = self.tuning.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_freed.clear()
                await self._wait_for(self._slot_freed.wait(), timeout=5)
                self._last_poll = time.time()
                continue
            messages = await self._receive(min(self.tuning.batch_size, free))
            self._last_poll = time.time()
            if self._stopping.is_set():
                await self._release_all(messages)
                break
            for raw in messages:
                self._start(raw)
            if messages:
                idle_since = None
            elif self.burst:
                idle_since = idle_since or time.monotonic()
                if (
                    not self._tasks
                    and not self._tick_pending
                    and time.monotonic() - idle_since >= self.tuning.burst_idle_seconds
                    and await self._queue_is_empty()
                ):
                    log.info("queue empty: burst finished")
                    return

    async def _receive(self, count: int) -> list[MessageTypeDef]:
        wait = self.tuning.wait_time_seconds
        if self.burst:
            wait = min(wait, max(1, ceil_seconds(self.tuning.burst_idle_seconds)))
        call = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.tuning.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        self.stats.polls += 1
        try:
            resp = await self._wait_for(call, timeout=None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("receive failed; backing off", extra={"error": str(exc)})
            await self._wait_for(asyncio.sleep(1), timeout=None)
            return []
        return list(resp.get("Messages", [])) if resp else []

    async def _wait_for(self, aw: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        """Await `aw` unless a stop is requested first (then cancel it and return None)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    async def _queue_is_empty(self) -> bool:
        attrs = (
            await self._sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        )["Attributes"]
        return all(int(v) == 0 for v in attrs.values())

    def _start(self, raw: MessageTypeDef) -> None:
        self.stats.received += 1
        task = asyncio.create_task(self._process(Message.from_sqs(raw)))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._slot_freed.set()

        task.add_done_callback(done)

    # --- one message -----------------------------------------------------------------------------

    async def _process(self, message: Message) -> None:
        with log_context(worker=self.name, message_id=message.id, job_id=message.job_id, attempt=message.receive_count):
            ctx = Context(worker=self.name, message=message, services=self.services, tuning=self.tuning)
            started = time.monotonic()
            try:
                parsed = self.stage.parse(message.body)
            except Exception as exc:
                poison = exc if isinstance(exc, Poison) else Poison(f"unparseable message: {exc}")
                await self._settle(ctx, poison, started)
                return
            heartbeat = asyncio.create_task(self._heartbeat(message))
            error: FleetError | None = None
            try:
                for mw in self.middleware:
                    await mw.before(ctx)
                await asyncio.wait_for(self.stage.handle(parsed, ctx), self.tuning.handler_timeout)
            except asyncio.CancelledError:
                heartbeat.cancel()
                await self._settle(ctx, None, started, released=True)
                raise
            except TimeoutError:
                error = Transient(f"handler timed out after {self.tuning.handler_timeout:g}s", code="TIMEOUT")
            except Exception as exc:
                error = classify(exc)
                if not isinstance(exc, FleetError):
                    log.debug("handler raised", exc_info=exc)
            finally:
                heartbeat.cancel()
            await self._settle(ctx, error, started)

    async def _settle(self, ctx: Context, error: FleetError | None, started: float, *, released: bool = False) -> None:
        """Decide and apply the message's fate, shielded so a cancellation cannot lose it halfway."""
        task = asyncio.ensure_future(self._apply_safely(ctx, error, started, released))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _apply_safely(self, ctx: Context, error: FleetError | None, started: float, released: bool) -> None:
        try:
            await self._apply(ctx, error, started, released)
        except Exception as exc:
            # e.g. the DLQ refused the message: leave it on the queue, where SQS redelivers it after
            # its visibility timeout (and its redrive policy catches it in the end). Never lost.
            log.error("could not settle message; it will be redelivered", extra={"error": str(exc)})

    async def _apply(self, ctx: Context, error: FleetError | None, started: float, released: bool) -> None:
        message = ctx.message
        retry_in: int | None = None
        if released:
            await self._release(message)
            status = "released"
            self.stats.released += 1
        elif error is None:
            await self._deleter.delete(message.receipt_handle)
            status = "succeeded"
            self.stats.succeeded += 1
        elif not isinstance(error, Retry):
            await self._dead_letter(message, error)
            status = "dead_lettered"
        elif message.receive_count >= self.tuning.max_attempts:
            error = type(error)(f"gave up after {message.receive_count} attempts: {error.reason}", code=error.code)
            await self._dead_letter(message, error)
            status = "dead_lettered"
        else:
            retry_in = (
                ceil_seconds(error.delay)
                if error.delay is not None
                else backoff_delay(message.receive_count, self.tuning.backoff_base, self.tuning.backoff_max)
            )
            await self._change_visibility(message, retry_in)
            status = "retrying"
            self.stats.retried += 1
        outcome = Outcome(status=status, duration=time.monotonic() - started, error=error, retry_in=retry_in)  # type: ignore[arg-type]
        for mw in self.middleware:
            try:
                await mw.after(ctx, outcome)
            except Exception as exc:
                log.warning("middleware failed", extra={"middleware": type(mw).__name__, "error": str(exc)})

    async def _heartbeat(self, message: Message) -> None:
        interval = self.tuning.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=self.tuning.visibility_timeout,
                )
                log.debug("visibility extended", extra={"by_s": self.tuning.visibility_timeout})
            except Exception as exc:
                log.warning("visibility heartbeat failed", extra={"error": str(exc)})

    async def _change_visibility(self, message: Message, seconds: int) -> None:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=min(seconds, 43_200),
            )
        except Exception as exc:
            # Not fatal: the message reappears after its current visibility timeout instead.
            log.warning("could not change visibility", extra={"error": str(exc)})

    async def _release(self, message: Message) -> None:
        await self._change_visibility(message, 0)

    async def _release_all(self, messages: list[MessageTypeDef]) -> None:
        for raw in messages:
            await self._release(Message.from_sqs(raw))
        self.stats.released += len(messages)

    async def _dead_letter(self, message: Message, error: FleetError) -> None:
        self.stats.dead_lettered += 1
        if self.dlq_url is None:
            # Without a DLQ the safest place is the source queue: leave it to SQS's own redrive/retention.
            log.error("no DLQ configured; message left on the queue", extra={"error": error.reason})
            return
        ours: dict[str, MessageAttributeValueTypeDef] = {
            "fleet.error": _string(error.reason[:REASON_LIMIT]),
            "fleet.error-code": _string(error.code),
            "fleet.worker": _string(self.name),
            "fleet.attempts": {"DataType": "Number", "StringValue": str(message.receive_count)},
            "fleet.source-queue": _string(self.queue_url.rsplit("/", 1)[-1]),
        }
        kept = {k: v for k, v in message.attributes.items() if k not in ours}
        attributes = {**dict(list(kept.items())[: MAX_ATTRIBUTES - len(ours)]), **ours}
        await self._sqs.send_message(QueueUrl=self.dlq_url, MessageBody=message.body, MessageAttributes=attributes)
        await self._deleter.delete(message.receipt_handle)

    # --- shutdown --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._tasks:
            timeout = self.tuning.drain_timeout
            log.info("draining", extra={"in_flight": len(self._tasks), "timeout_s": timeout})
            if timeout > 0 and not self._stop_now.is_set():
                all_done = asyncio.ensure_future(asyncio.wait(set(self._tasks)))
                now = asyncio.create_task(self._stop_now.wait())
                await asyncio.wait({all_done, now}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                all_done.cancel()
                now.cancel()
            pending = {t for t in self._tasks if not t.done()}
            for task in pending:
                task.cancel()
            if pending:
                log.warning("drain timeout: releasing unfinished messages", extra={"released": len(pending)})
            await asyncio.gather(*pending, return_exceptions=True)
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    # --- time-driven work -------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        assert isinstance(self.stage, Ticking)
        while True:
            with log_context(worker=self.name):
                try:
                    self._tick_pending = await self.stage.tick()
                except Exception as exc:
                    self._tick_pending = True
                    log.warning("tick failed", extra={"error": str(exc)}, exc_info=exc)
            await asyncio.sleep(self.stage.tick_interval)

    # --- health ----------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            self._write_health()
            await asyncio.sleep(5)

    def _write_health(self) -> None:
        try:
            write_health(
                self.services.settings.health_dir,
                HealthState(
                    worker=self.name,
                    pid=os.getpid(),
                    status=self._status,
                    in_flight=len(self._tasks),
                    processed=self.stats.succeeded,
                    failed=self.stats.dead_lettered,
                    last_poll=self._last_poll,
                    updated=time.time(),
                    poll_budget=self.tuning.wait_time_seconds + 10,
                ),
            )
        except OSError as exc:
            log.warning("health file not written", extra={"error": str(exc)})


def _string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value or "-"}
