"""`aggregate`: one stage object, fed two ways.

- From the Kinesis stream `fleet-events` (`shared.kinesis.StreamConsumer`): records are validated
  (`parse_record`; a bad one goes to the failed-records queue) and folded by the `Aggregator`.
- From the SQS queue `fleet-events` (`shared.runtime.Worker`): a message is one event or `{"events": [...]}`;
  it is validated (a bad one is poison: the DLQ, with the reason) and its events are put on the stream, each
  with an `event_id` (its own, else `sqs:<message id>:<index>`), so a redelivered message counts once. The
  stream is the one ordered log every count comes from.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.envelope import unwrap
from shared.errors import Poison
from shared.kinesis.records import StreamRecord
from shared.settings import load_stage_settings
from shared.stage import Context, Services
from workers.aggregate.aggregator import Aggregator, Incoming
from workers.aggregate.config import AggregateConfig
from workers.aggregate.events import Event, parse_event, partition_key, validate_event
from workers.aggregate.producer import put_records
from workers.aggregate.resources import EVENTS_STREAM

MAX_EVENTS_PER_MESSAGE = 500


class EventBatch(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    events: list[Any]  # list[Event]


class AggregateStage:
    name = "aggregate"

    def __init__(self, services: Services, config: AggregateConfig | None = None) -> None:
        self.config = config or load_stage_settings(AggregateConfig)
        self.services = services
        self.stream = services.settings.name_of(EVENTS_STREAM)
        self.aggregator = Aggregator(services, self.config, worker=self.name)

    # --- SQS: validate, then feed the stream -----------------------------------------------------------

    def parse(self, body: str) -> EventBatch:
        data = unwrap(body)
        batched = isinstance(data, dict) and "events" in data and "event_type" not in data
        if batched:
            raw = data["events"]
            if not isinstance(raw, list) or not raw:
                raise Poison("invalid message: events: must be a non-empty list", code="INVALID")
            if len(raw) > MAX_EVENTS_PER_MESSAGE:
                raise Poison(f"invalid message: more than {MAX_EVENTS_PER_MESSAGE} events", code="INVALID")
        else:
            raw = [data]
        events = []
        now = time.time()
        for i, item in enumerate(raw):
            try:
                events.append(validate_event(item, now=now, max_future_seconds=self.config.max_future_seconds))
            except Poison as exc:
                where = f"events.{i}: " if batched else ""
                raise Poison(f"{where}{exc.reason}", code=exc.code) from None
        return EventBatch(events=events)

    async def handle(self, message: EventBatch, ctx: Context) -> None:
        origin = ctx.message.origin_id
        records = []
        for i, event in enumerate(message.events):
            assert isinstance(event, Event)
            event_id = event.event_id or f"sqs:{origin}:{i}"
            data = json.dumps({**event.raw, "event_id": event_id}, separators=(",", ":")).encode()
            records.append({"Data": data, "PartitionKey": partition_key(event)})
        await put_records(self.services.aws.kinesis, self.stream, records)  # type: ignore[arg-type]

    # --- Kinesis: fold and write -----------------------------------------------------------------------

    def parse_record(self, record: StreamRecord) -> Event:
        now = record.arrived_at or time.time()
        return parse_event(record.data, now=now, max_future_seconds=self.config.max_future_seconds)

    async def submit(self, items: Sequence[tuple[StreamRecord, Event]]) -> asyncio.Future[None]:
        return await self.aggregator.submit([Incoming(r.shard_id, r.position, r.ident, e) for r, e in items])

    async def drain(self) -> None:
        await self.aggregator.drain()
