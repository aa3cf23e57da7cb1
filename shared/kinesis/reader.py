"""One leased shard, read in order: each batch to the stage, its checkpoint once the stage says it is durable.

The reader never waits for a batch before reading the next one (the stage may coalesce across batches and
shards); it keeps the batches in flight in order, and checkpoints the last record of the longest durable
prefix, at most every `checkpoint_seconds`. A batch that fails ends the reader: the consumer starts a new
one from the last durable record. Records a stage cannot parse go to the failed-records location first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import Poison, error_code
from shared.kinesis.config import StreamTuning
from shared.kinesis.failed import FailedRecords
from shared.kinesis.leases import LATEST, SHARD_END, TRIM_HORIZON, LeaseStore
from shared.kinesis.records import StreamRecord, StreamStage
from shared.logs import log_context
from shared.metrics import Metric, Metrics
from shared.runtime import RunStats

if TYPE_CHECKING:
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_kinesis.type_defs import RecordTypeDef

log = logging.getLogger("fleet.kinesis")

THROTTLED = {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}


class LeaseLost(Exception):
    """A checkpoint was refused: another worker holds the shard now."""


@dataclass
class StreamStats(RunStats):
    """The runtime's counters, read for records: `polls` GetRecords calls, `received` records read,
    `succeeded` records whose effects are durable, `dead_lettered` records sent to the failed-records queue."""

    checkpoints: int = 0
    leases_taken: int = 0
    leases_stolen: int = 0
    leases_lost: int = 0
    leases_released: int = 0
    shards_finished: int = 0


@dataclass
class _Batch:
    future: asyncio.Future[None]
    last: str  # sequence number of the batch's last record
    size: int
    read_at: float = field(default_factory=time.monotonic)


class ShardReader:
    def __init__(
        self,
        *,
        shard_id: str,
        start: str,
        stream: str,
        stream_arn: str,
        kinesis: KinesisClient,
        stage: StreamStage[Any],
        leases: LeaseStore,
        owner: str,
        tuning: StreamTuning,
        failed: FailedRecords,
        metrics: Metrics,
        worker: str,
        stats: StreamStats,
    ) -> None:
        self.shard_id = shard_id
        self.start = start  # the lease's checkpoint when this reader began
        self.stream = stream
        self.stream_arn = stream_arn  # GetRecords names its stream so that IAM can scope it (an iterator cannot)
        self._kinesis = kinesis
        self._stage = stage
        self._leases = leases
        self._owner = owner
        self._tuning = tuning
        self._failed = failed
        self._metrics = metrics
        self._worker = worker
        self.stats = stats
        self.read_to: str | None = None  # last sequence number handed to the stage
        self.durable: str | None = None  # last sequence number whose batch (and all before it) is durable
        self.checkpointed: str | None = None
        self.caught_up_since: float | None = None
        self.finished = False  # read to SHARD_END, and recorded
        self._batches: deque[_Batch] = deque()
        self._pending = 0
        self._stop = asyncio.Event()
        self._last_checkpoint = time.monotonic()

    # --- control (called by the consumer) -------------------------------------------------------------

    def stop_reading(self) -> None:
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return self._pending

    @property
    def resume_from(self) -> str:
        """Where a reader replacing this one starts: after the last durable record, else where this one did."""
        return self.durable or self.checkpointed or self.start

    async def finish(self, within: float) -> bool:
        """Wait (up to `within` s) for the batches in flight, then checkpoint what is durable. True if all were."""
        if self._batches:
            await asyncio.wait([b.future for b in self._batches], timeout=max(0.0, within))
        await self._settle(force=True)
        return not self._batches

    # --- reading -------------------------------------------------------------------------------------

    async def run(self) -> None:
        with log_context(shard_id=self.shard_id):
            log.info("reading shard", extra={"from": self.start})
            iterator = await self._iterator(self.start)
            delay = 0.5
            while not self._stop.is_set():
                await self._settle()
                if self._pending >= self._tuning.max_pending_records:
                    await self._wait_for_room()
                    continue
                try:
                    resp = await self._kinesis.get_records(
                        ShardIterator=iterator, Limit=self._tuning.max_records, StreamARN=self.stream_arn
                    )
                except ClientError as exc:
                    code = error_code(exc)
                    if code == "ExpiredIteratorException":
                        iterator = await self._iterator(self.read_to or self.start)
                        continue
                    level = logging.INFO if code in THROTTLED else logging.WARNING
                    log.log(level, "GetRecords failed; backing off", extra={"error": str(exc)[:300]})
                    await self._sleep(delay)
                    delay = min(delay * 2, 10)
                    iterator = await self._iterator(self.read_to or self.start)
                    continue
                delay = 0.5
                self.stats.polls += 1
                records = resp.get("Records", [])
                if records:
                    self.caught_up_since = None
                    await self._handle(records)
                    behind = resp.get("MillisBehindLatest")
                    if behind is not None:
                        await self._metrics.emit(
                            Metric("StreamLag", behind / 1000, "Seconds", {"Worker": self._worker})
                        )
                elif resp.get("MillisBehindLatest", 0) == 0 and self.caught_up_since is None:
                    self.caught_up_since = time.monotonic()
                next_iterator = resp.get("NextShardIterator")
                if next_iterator is None:
                    await self._end()
                    return
                iterator = next_iterator
                if not records:
                    await self._sleep(self._tuning.idle_seconds)

    async def _iterator(self, position: str) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.stream, "ShardId": self.shard_id}
        if position in (TRIM_HORIZON, LATEST):
            kwargs["ShardIteratorType"] = position
        elif position == SHARD_END:
            raise ValueError(f"shard {self.shard_id} is finished: nothing to read")
        else:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=position)
        resp = await self._kinesis.get_shard_iterator(**kwargs)
        return resp["ShardIterator"]

    async def _handle(self, raw: list[RecordTypeDef]) -> None:
        items = []
        for r in raw:
            arrived = r.get("ApproximateArrivalTimestamp")
            record = StreamRecord(
                stream=self.stream,
                shard_id=self.shard_id,
                sequence_number=r["SequenceNumber"],
                partition_key=r.get("PartitionKey", ""),
                data=bytes(r.get("Data", b"")),
                arrived_at=arrived.timestamp() if arrived is not None else None,
            )
            try:
                items.append((record, self._stage.parse_record(record)))
            except Exception as exc:
                poison = exc if isinstance(exc, Poison) else Poison(f"unparseable record: {exc}", code="UNPARSEABLE")
                await self._failed.send(record, poison, stop=self._stop)
                self.stats.dead_lettered += 1
                await self._metrics.emit(Metric("RecordsDeadLettered", 1, "Count", {"Worker": self._worker}))
        if items:
            future = await self._stage.submit(items)
        else:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
        future.add_done_callback(_retrieve)
        last = raw[-1]["SequenceNumber"]
        self._batches.append(_Batch(future, last, len(raw)))
        self._pending += len(raw)
        self.stats.received += len(raw)
        self.read_to = last

    async def _settle(self, *, force: bool = False) -> None:
        """Move the durable mark over finished batches (raising a failed batch's error) and checkpoint it."""
        done = 0
        while self._batches and self._batches[0].future.done():
            batch = self._batches.popleft()
            batch.future.result()
            self.durable = batch.last
            self._pending -= batch.size
            done += batch.size
        if done:
            self.stats.succeeded += done
            await self._metrics.emit(Metric("RecordsProcessed", done, "Count", {"Worker": self._worker}))
        due = force or time.monotonic() - self._last_checkpoint >= self._tuning.checkpoint_seconds
        if self.durable is not None and self.durable != self.checkpointed and due:
            await self._checkpoint(self.durable)

    async def _checkpoint(self, sequence_number: str) -> None:
        if not await self._leases.checkpoint(self.shard_id, self._owner, sequence_number):
            raise LeaseLost(f"checkpoint of {self.shard_id} refused: the lease is no longer ours")
        self.checkpointed = sequence_number
        self._last_checkpoint = time.monotonic()
        self.stats.checkpoints += 1

    async def _wait_for_room(self) -> None:
        first = self._batches[0].future if self._batches else None
        if first is not None:
            await asyncio.wait([first], timeout=self._tuning.idle_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _end(self) -> None:
        """The shard is closed and read to its end: once every batch is durable, mark it finished."""
        log.info("shard read to its end; finishing it once its records are durable")
        while self._batches:
            await asyncio.wait([b.future for b in self._batches])
            await self._settle()
        if not await self._leases.finish(self.shard_id, self._owner):
            raise LeaseLost(f"could not finish {self.shard_id}: the lease is no longer ours")
        self.checkpointed = SHARD_END
        self.finished = True


def _retrieve(future: asyncio.Future[None]) -> None:
    """A batch future nobody awaits any more (its reader failed or stopped) must not warn at exit."""
    if not future.cancelled():
        future.exception()
