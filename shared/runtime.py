"""The SQS runtime: one class that runs any stage.

Delivery is at-least-once, as SQS is; the runtime's promises are about what happens around a handler:

- long polls of up to 10, never more than `concurrency` messages in flight; a poll open when a stop comes is
  waited for, never abandoned, and what it brings is released at once;
- a body that fails validation is poison: sent to the DLQ at once with its reason, then deleted;
- success deletes (batched); `Retry` or any unexpected error delays the message by exponential backoff
  through its visibility (never by sleeping, never past SQS's 12 h limit), until `max_attempts` handler
  failures, then dead-letters it with the reason; `Fatal` dead-letters at once;
- while a handler runs, its message's visibility is extended (`shared/heartbeat.py`); the heartbeat is
  stopped and waited for before the message is settled, and a message SQS says is gone stops its handler;
- a handler's threads (`asyncio.to_thread`) finish before its message is settled, so a retry never overlaps
  the run it retries;
- on SIGTERM/SIGINT (`shared/app.py`): stop receiving, let handlers finish for `drain_timeout`, then cancel
  them and release their messages (re-sent, so a release never uses up an attempt). The writes that settle
  a message are shielded from cancellation;
- a message this process already settled, delivered again because its delete failed, is deleted again,
  not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared import threads
from shared.errors import FleetError, Poison, Transient, classify
from shared.fate import Fate, MessageLost, Outcome, decide, visibility_left
from shared.health import HealthState, write_health
from shared.heartbeat import Heartbeat
from shared.logs import log_context
from shared.middleware import Middleware, Result, default_middleware
from shared.resources import DeadLetters, Queue
from shared.settings import WorkerTuning, ceil_seconds
from shared.settler import MAX_MESSAGE_BYTES, DeadLetterRefused, Settler
from shared.stage import Context, Message, Services, Stage, Ticking

if TYPE_CHECKING:
    import concurrent.futures

    from types_aiobotocore_sqs.type_defs import MessageTypeDef

log = logging.getLogger("fleet.runtime")

REMEMBERED = 10_000  # settled message ids kept, to recognise a redelivery whose delete failed
SETTLE_TIMEOUT = 10.0  # seconds pending deletes get at shutdown
BAD_JOB_ID = "fleet.job-id is not a job id (letters, digits, - and _, at most 128)"
SUMMARY_SECONDS = 60  # a worker logs what it did every minute (successes are not logged one by one)


@dataclass
class RunStats:
    polls: int = 0
    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    lost: int = 0
    settle_failed: int = 0
    redelivered: int = 0  # already settled here, delivered again: deleted, not run


@dataclass
class _Run:
    """One delivery being handled."""

    message: Message
    task: asyncio.Task[None]
    threads: set[concurrent.futures.Future[Any]] = field(default_factory=set)
    lost: str | None = None


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
        dlq_url: str,
        tuning: WorkerTuning | None = None,
        burst: bool = False,
        middleware: Sequence[Middleware] | None = None,
        dlq_max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.stage = stage
        self.services = services
        self.name = stage.name
        self.tuning = tuning or services.settings.tuning(stage.name)
        self.queue_url = queue_url
        self.queue_name = queue_url.rsplit("/", 1)[-1]
        self.dlq_url = dlq_url
        self.burst = burst
        self.middleware = list(
            default_middleware(services.settings.log_successes) if middleware is None else middleware
        )
        self.stats = RunStats()
        self._sqs = services.aws.sqs
        self._settler = Settler(
            self._sqs, queue_url=queue_url, dlq_url=dlq_url, worker=self.name, dlq_max_bytes=dlq_max_bytes
        )
        self._heartbeat = Heartbeat(
            self._sqs,
            queue_url,
            visibility_timeout=self.tuning.visibility_timeout,
            interval=self.tuning.heartbeat_seconds,
            on_lost=self._lost,
        )
        self._runs: dict[str, _Run] = {}  # by receipt handle
        self._settled: dict[str, Outcome] = {}  # message id -> outcome, most recent last
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()  # tasks applying a fate: never cancelled
        self._open_poll: asyncio.Task[list[MessageTypeDef]] | None = None
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._stopped: asyncio.Future[None] | None = None
        self._stop_deadline = 0.0
        self._last_poll = time.time()
        self._poll_failures = 0
        self._last_error = ""
        self._status = "starting"
        self._tick_pending = False
        self._ticked_at = 0.0  # monotonic: when the last tick finished
        self._settled_at = 0.0  # monotonic: when the last message was settled

    @classmethod
    async def create(cls, stage: Stage[Any], services: Services, *, queue: Queue, **kwargs: Any) -> Worker:
        url, dlq = await resolve_queue(services, queue)
        resp = await services.aws.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["MaximumMessageSize"])
        max_bytes = int(resp.get("Attributes", {}).get("MaximumMessageSize", MAX_MESSAGE_BYTES))
        return cls(stage, services, queue_url=url, dlq_url=dlq, dlq_max_bytes=max_bytes, **kwargs)

    # --- lifecycle -------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Drain (default) or stop now: cancel in-flight handlers at once and release their messages.
        A second stop while draining stops now."""
        if now or self._stopping.is_set():
            self._stop_now.set()
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.tuning.drain_timeout
            log.info(
                f"stopping {self.name}: draining in-flight messages",
                extra={"worker": self.name, "in_flight": len(self._tasks)},
            )
        self._stopping.set()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def run(self) -> RunStats:
        threads.install(asyncio.get_running_loop())
        self._settler.start()
        self._heartbeat.start()
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
                await asyncio.gather(self._drain(), self._release_open_poll())
                await self._heartbeat.close()
                await self._settler.close(SETTLE_TIMEOUT)
                await self.services.metrics.flush()
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
                self._status = "stopped"
                self._write_health()
                log.info("worker stopped", extra=vars(self.stats))
        return self.stats

    # --- receiving -------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        idle_since: float | None = None
        while not self._stopping.is_set():
            free = self.tuning.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_freed.clear()
                await self._unless_stopped(self._slot_freed.wait(), within=5)
                self._last_poll = time.time()  # saturated, not stuck
                continue
            poll = asyncio.create_task(self._receive(min(self.tuning.batch_size, free)))
            if not await self._unless_stopped(poll, cancel=False):
                # Never abandon an open poll: SQS would hand its messages to a connection nobody reads and
                # hide them for the whole visibility timeout (aws-sdk-go-v2#2068). Release them instead.
                self._open_poll = poll
                return
            messages = poll.result()
            if self._stopping.is_set():
                await self._release_unstarted(messages)
                return
            for raw in messages:
                self._start(raw)
            if messages:
                idle_since = None
            elif self.burst:
                idle_since = idle_since or time.monotonic()
                if (
                    not self._tasks
                    and not self._tick_pending
                    and self._ticked_since_last_settle()
                    and time.monotonic() - idle_since >= self.tuning.burst_idle_seconds
                    and await self._queue_is_empty()
                ):
                    log.info("queue empty: burst finished")
                    return

    async def _receive(self, count: int) -> list[MessageTypeDef]:
        wait = self.tuning.wait_time_seconds
        if self.burst:
            wait = min(wait, max(1, ceil_seconds(self.tuning.burst_idle_seconds)))
        self.stats.polls += 1
        try:
            resp = await self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=self.tuning.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )
        except Exception as exc:
            self._poll_failures += 1
            self._last_error = str(exc)[:300]
            log.warning("receive failed; backing off", extra={"error": str(exc), "failures": self._poll_failures})
            await self._unless_stopped(asyncio.sleep(min(2.0 ** (self._poll_failures - 1), 20)))
            return []
        self._poll_failures = 0
        self._last_poll = time.time()
        return list(resp.get("Messages", []))

    async def _unless_stopped(self, aw: Awaitable[Any], within: float | None = None, *, cancel: bool = True) -> bool:
        """Await `aw` until it finishes (True), or a stop is requested or `within` seconds pass (False; `aw` is
        then cancelled, unless `cancel=False`)."""
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task, self._stop_signal()}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return True
        if cancel:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return False

    def _stop_signal(self) -> asyncio.Future[None]:
        """One future for the worker's whole life, resolved by `stop()`: waiting on it costs no task."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
            if self._stopping.is_set():
                self._stopped.set_result(None)
        return self._stopped

    async def _queue_is_empty(self) -> bool:
        try:
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
        except Exception as exc:
            log.warning("could not check whether the queue is empty; polling on", extra={"error": str(exc)})
            return False
        return all(int(v) == 0 for v in attrs.values())

    def _ticked_since_last_settle(self) -> bool:
        """A burst ends only once a tick has run after the last message: the tick's verdict (`tick_pending`) is
        about work that message may have created (ingest's manifest for its file)."""
        return not isinstance(self.stage, Ticking) or self._ticked_at > self._settled_at

    def _start(self, raw: MessageTypeDef) -> None:
        self.stats.received += 1
        message = Message.from_sqs(raw)
        earlier = self._settled.get(message.id)
        task = asyncio.create_task(
            self._settle_again(message, earlier) if earlier is not None else self._process(message)
        )
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._slot_freed.set()

        task.add_done_callback(done)

    # --- one message -----------------------------------------------------------------------------

    async def _process(self, message: Message) -> None:
        with log_context(worker=self.name, message_id=message.id, job_id=message.job_id, attempt=message.attempt):
            ctx = Context(
                worker=self.name, message=message, services=self.services, tuning=self.tuning, queue=self.queue_name
            )
            started = time.monotonic()
            try:
                if message.job_id_malformed:
                    raise Poison(
                        "fleet.job-id is not a job id (letters, digits, - and _, at most 128)", code="BAD_JOB_ID"
                    )
                parsed = self.stage.parse(message.body)
            except Exception as exc:
                poison = exc if isinstance(exc, Poison) else Poison(f"unparseable message: {exc}")
                await self._settle(ctx, Fate(Outcome.DEAD_LETTERED, poison), started)
                return
            task = asyncio.current_task()
            assert task is not None
            run = _Run(message, task)
            self._runs[message.receipt_handle] = run
            self._heartbeat.track(message)
            try:
                error = await self._handle(parsed, ctx, run)
                if run.threads:
                    log.info("waiting for the handler's threads before settling", extra={"threads": len(run.threads)})
                    if not await threads.finish(run.threads, self._thread_budget(message)):
                        log.error("work still running in a thread as its message is settled")
            except asyncio.CancelledError:
                await self._forget(run)
                await self._settle(ctx, Fate(Outcome.RELEASED), started)
                raise
            await self._forget(run)
            fate = decide(
                error,
                attempt=message.attempt,
                tuning=self.tuning,
                visibility_left=visibility_left(message.received_at, time.time()),
            )
            await self._settle(ctx, fate, started)

    async def _handle(self, parsed: Any, ctx: Context, run: _Run) -> FleetError | None:
        """Run the handler under its timeout; the error it ends with, or None."""
        limit = self.tuning.handler_timeout
        timeout = asyncio.timeout(limit)
        run.threads = threads.track()
        try:
            for mw in self.middleware:
                await mw.before(ctx)
            async with timeout:
                await self.stage.handle(parsed, ctx)
        except TimeoutError as exc:
            if timeout.expired():
                return Transient(f"handler timed out after {limit:g}s", code="TIMEOUT")
            return self._failed(exc)  # the handler's own timeout: keep its cause
        except asyncio.CancelledError:
            if run.lost is None:
                raise
            run.task.uncancel()
            return MessageLost(run.lost)
        except Exception as exc:
            return self._failed(exc)
        if run.lost is not None:
            if run.task.cancelling():
                run.task.uncancel()
            return MessageLost(run.lost)
        if timeout.expired():
            return Transient(f"handler timed out after {limit:g}s and ignored its cancellation", code="TIMEOUT")
        return None

    @staticmethod
    def _thread_budget(message: Message) -> float:
        """How long a timed-out handler's threads may run on before its message is settled anyway: as long as
        SQS can keep the message hidden, so a retry never overlaps them. A thread that hangs holds its slot."""
        return visibility_left(message.received_at, time.time())

    @staticmethod
    def _failed(exc: Exception) -> FleetError:
        if not isinstance(exc, FleetError):
            log.debug("handler raised", exc_info=exc)
        return classify(exc)

    async def _forget(self, run: _Run) -> None:
        self._runs.pop(run.message.receipt_handle, None)
        await self._heartbeat.forget(run.message)

    def _lost(self, message: Message, reason: str) -> None:
        run = self._runs.get(message.receipt_handle)
        if run is not None and run.lost is None:
            run.lost = reason
            run.task.cancel()

    async def _settle_again(self, message: Message, outcome: Outcome) -> None:
        """A redelivery of a message this process settled (its delete failed): delete it, do not run it."""
        with log_context(worker=self.name, message_id=message.id, job_id=message.job_id):
            self.stats.redelivered += 1
            deleted = await self._settler.delete(message)
            log.warning(
                "message already settled here, delivered again: deleted, not run",
                extra={"outcome": outcome.value, "deleted": deleted},
            )
            if not deleted:
                self.stats.settle_failed += 1

    async def _settle(self, ctx: Context, fate: Fate, started: float) -> None:
        """Apply the message's fate. A task that is settling is never cancelled by a drain (`_drain`), so a
        settle cannot be lost halfway; it runs inline, without a task of its own."""
        task = asyncio.current_task()
        assert task is not None
        self._settling.add(task)
        try:
            await self._apply(ctx, fate, started)
        finally:
            self._settling.discard(task)

    async def _apply(self, ctx: Context, fate: Fate, started: float) -> None:
        message = ctx.message
        settled = True
        try:
            match fate.outcome:
                case Outcome.SUCCEEDED:
                    settled = await self._settler.delete(message)
                case Outcome.RETRYING:
                    assert fate.delay is not None
                    settled = await self._settler.retry(message, fate.delay)
                case Outcome.DEAD_LETTERED:
                    assert fate.error is not None
                    settled = await self._settler.dead_letter(message, fate.error)
                case Outcome.RELEASED:
                    settled = await self._settler.release(message)
                case Outcome.LOST:
                    pass  # SQS no longer knows our receipt: there is nothing to settle
        except DeadLetterRefused as exc:
            # e.g. the DLQ is gone: leave the message on its queue, where SQS delivers it again after its
            # visibility timeout (and its redrive policy catches it in the end). Never lost.
            log.error("the DLQ refused the message; it stays on its queue", extra={"error": str(exc)})
            settled = False
            fate = Fate(Outcome.RETRYING, fate.error, delay=self.tuning.visibility_timeout, note=str(exc)[:200])
        self._settled_at = time.monotonic()
        if fate.outcome in (Outcome.SUCCEEDED, Outcome.DEAD_LETTERED):
            self._remember(message.id, fate.outcome)
        self._count(fate.outcome, settled)
        result = Result(fate=fate, duration=time.monotonic() - started, settled=settled)
        for mw in self.middleware:
            try:
                await mw.after(ctx, result)
            except Exception as exc:
                log.warning("middleware failed", extra={"middleware": type(mw).__name__, "error": str(exc)})

    def _remember(self, message_id: str, outcome: Outcome) -> None:
        self._settled[message_id] = outcome  # (a dict keeps insertion order: the oldest comes first)
        if len(self._settled) > REMEMBERED:
            del self._settled[next(iter(self._settled))]

    def _count(self, outcome: Outcome, settled: bool) -> None:
        stats = self.stats
        match outcome:
            case Outcome.SUCCEEDED:
                stats.succeeded += 1
            case Outcome.RETRYING:
                stats.retried += 1
            case Outcome.DEAD_LETTERED:
                stats.dead_lettered += 1
            case Outcome.RELEASED:
                stats.released += 1
            case Outcome.LOST:
                stats.lost += 1
        stats.settle_failed += not settled

    async def _release_unstarted(self, messages: list[MessageTypeDef]) -> None:
        for raw in messages:
            message = Message.from_sqs(raw)
            with log_context(worker=self.name, message_id=message.id):
                released = await self._settler.release(message)
            self.stats.released += 1
            self.stats.settle_failed += not released

    async def _release_open_poll(self) -> None:
        poll, self._open_poll = self._open_poll, None
        if poll is None:
            return
        # Waited for (at most a long poll), unless told to stop now (a second Ctrl-C): then its messages, if
        # any, come back after their visibility timeout.
        now = asyncio.create_task(self._stop_now.wait())
        done, _ = await asyncio.wait(
            {poll, now}, timeout=self.tuning.wait_time_seconds + 10, return_when="FIRST_COMPLETED"
        )
        now.cancel()
        if poll not in done:
            poll.cancel()
            log.warning("stopped without waiting for the open poll")
            return
        try:
            messages = poll.result()
        except Exception as exc:
            log.warning("the poll open at stop did not finish", extra={"error": str(exc)})
            return
        if messages:
            log.info("releasing messages received as the worker stopped", extra={"released": len(messages)})
        await self._release_unstarted(messages)

    # --- shutdown --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._tasks:
            deadline = self._stop_deadline or time.monotonic() + self.tuning.drain_timeout
            timeout = max(0.0, deadline - time.monotonic())
            log.info("draining", extra={"in_flight": len(self._tasks), "timeout_s": round(timeout, 1)})
            if timeout > 0 and not self._stop_now.is_set():
                all_done = asyncio.ensure_future(asyncio.wait(set(self._tasks)))
                now = asyncio.create_task(self._stop_now.wait())
                await asyncio.wait({all_done, now}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                all_done.cancel()
                now.cancel()
            pending = {t for t in self._tasks if not t.done()}
            for task in pending - self._settling:
                task.cancel()
            if pending - self._settling:
                log.warning(
                    "drain timeout: releasing unfinished messages", extra={"released": len(pending - self._settling)}
                )
            await asyncio.gather(*pending, return_exceptions=True)

    # --- time-driven work -------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        assert isinstance(self.stage, Ticking)
        while True:
            with log_context(worker=self.name):
                started = time.monotonic()
                try:
                    self._tick_pending = await self.stage.tick()
                except Exception as exc:
                    self._tick_pending = True
                    log.warning("tick failed", extra={"error": str(exc)}, exc_info=exc)
                self._ticked_at = started  # a tick that began after a settle has seen that message's work
            await asyncio.sleep(self.stage.tick_interval)

    # --- health ----------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        reported = RunStats()
        last_summary = time.monotonic()
        while True:
            self._write_health()
            await asyncio.sleep(5)
            if time.monotonic() - last_summary >= SUMMARY_SECONDS:
                since = {k: v - getattr(reported, k) for k, v in vars(self.stats).items()}
                if since["received"]:
                    with log_context(worker=self.name):
                        log.info("worker summary", extra={"seconds": SUMMARY_SECONDS, **since})
                reported, last_summary = RunStats(**vars(self.stats)), time.monotonic()

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
                    poll_failures=self._poll_failures,
                    last_error=self._last_error,
                ),
            )
        except OSError as exc:
            log.warning("health file not written", extra={"error": str(exc)})
