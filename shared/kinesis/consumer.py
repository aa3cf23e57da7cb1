"""The stream runtime: a KCL-style consumer that several worker tasks share, with the SQS runtime's interface.

`StreamConsumer` has `name`, `async run() -> stats` and `stop(now=False)`, like `shared.runtime.Worker`, and
`shared.app.run_workers` runs both for a worker whose declaration names a queue and a stream.

Every `renew_interval` (a third of `lease_seconds`) it:
- lists the shards every `sync_seconds` and creates a lease for each new one (reshards are discovered so);
- renews the leases it holds: a renewal refused means another worker took the shard, and its reader stops;
- reads every lease and takes its share (`shared/kinesis/balance.py`): free and expired leases first, else
  one lease stolen from the most loaded worker; a child shard only once its parents are finished;
- restarts a reader whose batch failed, from the last durable record.

On SIGTERM (drain): stop reading, have the stage make what it holds durable (`drain()`), checkpoint, and
release every lease at once, so other workers take the shards on their next look instead of waiting for
expiry. A second signal stops now: readers are cancelled and leases released (the shards are read again
from their last checkpoint, so effects must be idempotent per record — they are checkpointed only once
durable). A crash leaves the leases to expire. Health, logs and metrics are the runtime's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.health import HealthState, write_health
from shared.kinesis.balance import ExpiryWatch, eligible, plan
from shared.kinesis.config import StreamTuning
from shared.kinesis.failed import FailedRecords
from shared.kinesis.leases import Lease, LeaseStore
from shared.kinesis.reader import LeaseLost, ShardReader, StreamStats
from shared.kinesis.records import StreamStage
from shared.kinesis.shards import Shard, list_shards
from shared.logs import log_context
from shared.resources import LEASES, DeadLetters, Queue, Stream
from shared.settings import WorkerTuning
from shared.stage import Services

log = logging.getLogger("fleet.kinesis")

RESTART_DELAY = 2.0  # seconds before a failed reader is started again
HEALTH_EVERY = 5.0


@dataclass
class _Running:
    reader: ShardReader
    task: asyncio.Task[None]


def new_owner_id() -> str:
    """Unique per process run: a restarted worker never mistakes its predecessor's leases for its own."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StreamConsumer:
    def __init__(
        self,
        stage: StreamStage[Any],
        services: Services,
        *,
        stream_name: str,
        tuning: WorkerTuning,
        stream_tuning: StreamTuning | None = None,
        dlq_url: str | None = None,
        burst: bool = False,
        owner: str | None = None,
        app: str | None = None,
    ) -> None:
        self.stage = stage
        self.services = services
        self.app = app or stage.name
        self.name = f"{self.app}.stream"  # results key and health file: `fleet health APP` checks it too
        self.stream = stream_name
        self.tuning = tuning
        self.stream_tuning = stream_tuning or StreamTuning()
        self.burst = burst
        self.owner = owner or new_owner_id()
        self.stats = StreamStats()
        # Lease calls get their own client (own connection pool): a renewal must never queue behind the
        # stage's bulk writes, or a busy worker would lose its leases. Its calls are retried by the loop.
        self.leases = LeaseStore(
            services.aws.dynamodb_once, services.settings.name_of(LEASES), app=self.app, stream=stream_name
        )
        self.failed = FailedRecords(services.aws.sqs, dlq_url, worker=self.app)
        self._kinesis = services.aws.kinesis
        self._watch = ExpiryWatch(self.stream_tuning.lease_seconds)
        self._held: dict[str, Lease] = {}
        self._running: dict[str, _Running] = {}
        self._restart: dict[str, tuple[str, float]] = {}  # shard -> (resume from, not before)
        self._listed: dict[str, Shard] = {}
        self._known: dict[str, Lease] = {}  # every lease, as last read
        self._synced = False
        self._stream_arn = ""
        self._balanced_once = False
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._stop_deadline = 0.0
        self._status = "starting"
        self._last_poll = time.time()
        self._poll_failures = 0
        self._last_error = ""
        self._idle_since = time.monotonic()

    @classmethod
    async def create(
        cls,
        stage: StreamStage[Any],
        services: Services,
        *,
        stream: Stream,
        dead_letters: Queue | None = None,
        **kwargs: Any,
    ) -> StreamConsumer:
        """A consumer of a declared stream; its failed records go to `dead_letters`' DLQ when given."""
        dlq_url = None
        if dead_letters is not None:
            name = services.settings.name_of(DeadLetters.of(dead_letters))
            dlq_url = (await services.aws.sqs.get_queue_url(QueueName=name))["QueueUrl"]
        return cls(stage, services, stream_name=services.settings.name_of(stream), dlq_url=dlq_url, **kwargs)

    # --- lifecycle -------------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Drain (default) or stop now; a second stop while draining stops now."""
        if now or self._stopping.is_set():
            self._stop_now.set()
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.tuning.drain_timeout
            log.info(f"stopping {self.name}: draining", extra={"worker": self.app, "shards": sorted(self._held)})
        self._stopping.set()

    @property
    def shards(self) -> list[str]:
        """The shards this consumer holds now."""
        return sorted(self._held)

    async def run(self) -> StreamStats:
        health = asyncio.create_task(self._health_loop(), name="fleet-stream-health")
        with log_context(worker=self.app, stream=self.stream):
            log.info(
                "stream consumer started",
                extra={"owner": self.owner, "lease_s": self.stream_tuning.lease_seconds, "burst": self.burst},
            )
            try:
                self._status = "running"
                await self._coordinate()
            finally:
                self._status = "draining"
                await self._shutdown()
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
                self._status = "stopped"
                self._write_health()
                log.info("stream consumer stopped", extra=vars(self.stats))
        return self.stats

    # --- coordination ----------------------------------------------------------------------------------

    async def _coordinate(self) -> None:
        next_sync = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_sync:
                    await self._sync()
                    next_sync = time.monotonic() + self.stream_tuning.sync_seconds
                await self._renew()
                await self._balance()
                self._poll_failures = 0
                self._last_poll = time.time()
            except Exception as exc:
                self._poll_failures += 1
                self._last_error = str(exc)[:300]
                log.warning("lease coordination failed; retrying", extra={"error": str(exc)[:300]}, exc_info=exc)
            await self._reap()
            if self.burst and await self._burst_done():
                log.info("every shard read to its tip: burst finished")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.stream_tuning.renew_interval)

    async def _sync(self) -> None:
        """List the shards and give each new one a lease (a reshard's children name their parents)."""
        if not self._stream_arn:
            summary = await self._kinesis.describe_stream_summary(StreamName=self.stream)
            self._stream_arn = summary["StreamDescriptionSummary"]["StreamARN"]
        shards = await list_shards(self._kinesis, self.stream)
        self._listed = {s.shard_id: s for s in shards}
        known = await self.leases.load(self._listed)
        for shard in shards:
            if shard.shard_id not in known and await self.leases.ensure(
                shard.shard_id, shard.parents, self.stream_tuning.initial_position
            ):
                log.info("new shard: lease created", extra={"shard_id": shard.shard_id, "parents": list(shard.parents)})
        self._synced = True

    async def _renew(self) -> None:
        for shard_id in list(self._held):
            lease = await self.leases.renew(shard_id, self.owner)
            if lease is None or lease.finished:
                self._drop(shard_id, "lease taken by another worker" if lease is None else "shard finished")
                self.stats.leases_lost += lease is None
                continue
            self._held[shard_id] = lease

    async def _balance(self) -> None:
        self._known = await self.leases.load(self._listed)
        expired = self._watch.expired(self._known)
        if self._stopping.is_set():
            return
        decided = plan(self.owner, self._known, expired, set(self._listed))
        take = decided.take
        if not self._balanced_once:
            # Workers started together all see every lease free: one lease each on the first round, then
            # their shares, instead of one grabbing everything and the others stealing it back.
            take = take[:1]
            self._balanced_once = True
        for shard_id in take:
            await self._take(self._known[shard_id], stolen=False)
        if decided.steal is not None:
            await self._take(self._known[decided.steal], stolen=True)

    async def _take(self, seen: Lease, *, stolen: bool) -> None:
        lease = await self.leases.take(seen, self.owner)
        if lease is None:
            return  # another worker moved first
        self._held[lease.shard_id] = lease
        if stolen:
            self.stats.leases_stolen += 1
        else:
            self.stats.leases_taken += 1
        log.info(
            "lease stolen" if stolen else "lease taken",
            extra={"shard_id": lease.shard_id, "from_owner": seen.owner, "checkpoint": lease.checkpoint},
        )
        self._start_reader(lease.shard_id, lease.checkpoint)

    def _start_reader(self, shard_id: str, start: str) -> None:
        reader = ShardReader(
            shard_id=shard_id,
            start=start,
            stream=self.stream,
            stream_arn=self._stream_arn,
            kinesis=self._kinesis,
            stage=self.stage,
            leases=self.leases,
            owner=self.owner,
            tuning=self.stream_tuning,
            failed=self.failed,
            metrics=self.services.metrics,
            worker=self.app,
            stats=self.stats,
        )
        self._running[shard_id] = _Running(reader, asyncio.create_task(reader.run(), name=f"fleet-shard-{shard_id}"))

    def _drop(self, shard_id: str, why: str) -> None:
        """Stop reading a shard this consumer no longer holds: no checkpoint, its effects are replayed."""
        self._held.pop(shard_id, None)
        self._restart.pop(shard_id, None)
        running = self._running.pop(shard_id, None)
        if running is not None:
            running.task.cancel()
        log.warning("shard dropped", extra={"shard_id": shard_id, "why": why})

    async def _reap(self) -> None:
        """Handle readers that ended: finished shards, lost leases, failures (restarted after a pause)."""
        now = time.monotonic()
        for shard_id, running in list(self._running.items()):
            if not running.task.done():
                continue
            del self._running[shard_id]
            error = None if running.task.cancelled() else running.task.exception()
            if running.reader.finished:
                self._held.pop(shard_id, None)
                self.stats.shards_finished += 1
                log.info("shard finished", extra={"shard_id": shard_id})
            elif isinstance(error, LeaseLost):
                self._held.pop(shard_id, None)
                self.stats.leases_lost += 1
                log.warning("shard dropped", extra={"shard_id": shard_id, "why": str(error)})
            elif error is not None and not self._stopping.is_set():
                log.error(
                    "shard reader failed; restarting it from its last durable record",
                    extra={"shard_id": shard_id, "error": str(error)[:300], "resume_from": running.reader.resume_from},
                    exc_info=error,
                )
                self._restart[shard_id] = (running.reader.resume_from, now + RESTART_DELAY)
        for shard_id, (start, when) in list(self._restart.items()):
            if now >= when and shard_id in self._held and not self._stopping.is_set():
                del self._restart[shard_id]
                self._start_reader(shard_id, start)

    async def _burst_done(self) -> bool:
        """Burst mode: done once every eligible shard has an owner and ours are read to their tips."""
        if not self._synced:
            return False
        owned = {s for s, lease in self._known.items() if lease.owner is not None}
        if any(s not in owned for s in eligible(self._known, set(self._listed))) or self._restart:
            self._idle_since = time.monotonic()
            return False
        readers = [r.reader for r in self._running.values()]
        now = time.monotonic()
        idle = self.tuning.burst_idle_seconds
        if any(r.caught_up_since is None or now - r.caught_up_since < idle for r in readers):
            return False
        if not readers and now - self._idle_since < idle:
            return False
        try:
            await self.stage.drain()
            return all([await r.finish(self.tuning.drain_timeout) for r in readers])
        except Exception as exc:  # e.g. a lease lost meanwhile: the next rounds sort it out
            log.info("not done yet", extra={"why": str(exc)[:200]})
            return False

    # --- shutdown --------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        running = list(self._running.values())
        for r in running:
            r.reader.stop_reading()
        deadline = self._stop_deadline or time.monotonic() + self.tuning.drain_timeout
        if running and not self._stop_now.is_set():
            await self._until_stopped_now(asyncio.wait([r.task for r in running]), deadline)
            with contextlib.suppress(Exception):
                await self._until_stopped_now(self.stage.drain(), deadline)
            for r in running:
                if r.task.done() and not r.task.cancelled() and r.task.exception() is None:
                    try:
                        await self._until_stopped_now(r.reader.finish(deadline - time.monotonic()), deadline)
                    except Exception as exc:
                        log.warning("final checkpoint failed", extra={"shard_id": r.reader.shard_id, "error": str(exc)})
        for r in running:
            r.task.cancel()
        await asyncio.gather(*(r.task for r in running), return_exceptions=True)
        self._running.clear()
        for shard_id in list(self._held):
            try:
                released = await self.leases.release(shard_id, self.owner)
            except Exception as exc:
                released = False
                log.warning("lease not released; it will expire", extra={"shard_id": shard_id, "error": str(exc)})
            self.stats.leases_released += released
            log.info("lease released" if released else "lease already gone", extra={"shard_id": shard_id})
        self._held.clear()

    async def _until_stopped_now(self, aw: Any, deadline: float) -> None:
        """Await `aw` until `deadline` or a second stop, whichever comes first (then cancel it)."""
        task = asyncio.ensure_future(aw)
        now_task = asyncio.create_task(self._stop_now.wait())
        try:
            await asyncio.wait(
                {task, now_task}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            now_task.cancel()
        if not task.done():
            task.cancel()
            log.warning("drain timeout: the rest is read again from the last checkpoint")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, return_exceptions=True)

    # --- health ----------------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            self._write_health()
            await asyncio.sleep(HEALTH_EVERY)

    def _write_health(self) -> None:
        try:
            write_health(
                self.services.settings.health_dir,
                HealthState(
                    worker=self.name,
                    pid=os.getpid(),
                    status=self._status,
                    in_flight=sum(r.reader.in_flight for r in self._running.values()),
                    processed=self.stats.succeeded,
                    failed=self.stats.dead_lettered,
                    last_poll=self._last_poll,
                    updated=time.time(),
                    poll_budget=self.stream_tuning.lease_seconds + 10,
                    poll_failures=self._poll_failures,
                    last_error=self._last_error,
                ),
            )
        except OSError as exc:
            log.warning("health file not written", extra={"error": str(exc)})
