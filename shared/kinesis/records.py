"""What a stream stage is: records in, a future out that says when their effects are durable.

A stream stage differs from an SQS stage in one way that matters: records of a shard must be finished in
order, because a shard is resumed from one checkpoint. So the consumer hands a stage a whole batch and
checkpoints only once the stage says the batch's effects are durable; the stage may take its time (fold,
coalesce, flush on a timer) as long as it eventually resolves the future, or fails it to have the batch
read again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

SEQUENCE_WIDTH = 64  # Kinesis sequence numbers are decimal strings of up to 56 digits; moto's are "1", "2", ...


def sequence_key(sequence_number: str) -> str:
    """A sequence number as a fixed-width string: ordering by string is ordering by number.

    DynamoDB numbers hold 38 digits, fewer than a Kinesis sequence number, and moto numbers each shard from
    "1": compare within a shard only, always through this key.
    """
    if not sequence_number.isdigit() or len(sequence_number) > SEQUENCE_WIDTH:
        raise ValueError(f"not a Kinesis sequence number: {sequence_number[:80]!r}")
    return sequence_number.zfill(SEQUENCE_WIDTH)


@dataclass(frozen=True)
class StreamRecord:
    stream: str
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes
    arrived_at: float | None = None  # ApproximateArrivalTimestamp, epoch seconds

    @property
    def position(self) -> str:
        return sequence_key(self.sequence_number)

    @property
    def ident(self) -> str:
        """Where the record is: the same record read twice has the same ident; a copy put again does not."""
        return f"{self.shard_id}:{self.sequence_number}"


@runtime_checkable
class StreamStage(Protocol[T]):
    """A stage fed by `shared.kinesis.StreamConsumer`.

    - `parse_record` validates one record; raising `shared.errors.Poison` (or anything else) sends the record
      to the failed-records location with its shard and sequence number, and the rest of the batch goes on.
    - `submit` takes a shard's batch of parsed records (in shard order) and returns a future resolved once
      their effects are durable; the consumer checkpoints the batch only then. Failing the future makes the
      consumer read the shard again from its last durable record, so effects must be idempotent per record
      (`StreamRecord.ident`). `submit` may wait before returning (backpressure).
    - `drain` makes everything submitted so far durable without waiting for any timer (shutdown, burst end).
    """

    name: str

    def parse_record(self, record: StreamRecord) -> T: ...

    async def submit(self, items: Sequence[tuple[StreamRecord, T]]) -> asyncio.Future[None]: ...

    async def drain(self) -> None: ...
