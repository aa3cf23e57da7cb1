"""aggregate: a job of events on the queue is fed to the stream, and the stream (with more events, one of them
poison) is folded into entity metrics, with event-id markers, leases, checkpoints and an alert."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.app import send_job
from shared.kinesis.config import StreamTuning
from shared.kinesis.consumer import StreamConsumer
from tests.helpers import drain_queue, queue_urls
from tests.iam.harness import Denied, Run
from tests.iam.scenarios import scenario
from workers.aggregate.config import AggregateConfig
from workers.aggregate.resources import EVENTS, EVENTS_STREAM, METRICS
from workers.aggregate.stage import AggregateStage

POISON_RECORD = b'{"event_type": "lesson_planned"}'


def event(kind: str, at: datetime, event_id: str, **payload: Any) -> dict[str, Any]:
    return {"event_type": kind, "timestamp": at.isoformat(), "event_id": event_id, "payload": payload}


@scenario("aggregate")
async def aggregate(run: Run) -> None:
    # Given four IB calls and a rated session on the stream, with a poison record among them, and a job of
    # two more events on the queue
    t = datetime.now(UTC) - timedelta(minutes=5)
    student = f"st-{run.ident}"
    on_stream = [
        event("ib_call_logged", t - timedelta(days=d), f"{run.ident}-ib-{d}", student_id=student) for d in range(4)
    ]
    on_stream.append(
        event("session_completed", t, f"{run.ident}-s", student_id=student, tutor_id="tu-1", tutor_rating=4.5)
    )
    records: Any = [{"Data": json.dumps(e).encode(), "PartitionKey": student} for e in on_stream]
    records.insert(2, {"Data": POISON_RECORD, "PartitionKey": student})
    await run.admin.aws.kinesis.put_records(StreamName=run.settings.name_of(EVENTS_STREAM), Records=records)
    queued = [event("session_started", t, f"{run.ident}-q-{i}", student_id=student, tutor_id="tu-1") for i in range(2)]
    await send_job(run.admin, EVENTS, {"events": queued}, kind="events")

    # When the worker's queue consumer feeds the stream, and its stream consumer reads it, both under its policy
    stage = AggregateStage(run.worker, AggregateConfig(flush_interval_seconds=0.2, max_delay_seconds=0.2))
    fed = await run.burst(stage)
    consumer = await StreamConsumer.create(
        stage,
        run.worker,
        stream=EVENTS_STREAM,
        dead_letters=EVENTS,
        tuning=run.tuning(burst_idle_seconds=0.5, drain_timeout=10),
        stream_tuning=StreamTuning(lease_seconds=3, renew_seconds=0.3, idle_seconds=0.2, checkpoint_seconds=0),
        burst=True,
    )
    reading = asyncio.create_task(consumer.run())
    denied = asyncio.create_task(run.recorder.denied_event.wait())
    done, _ = await asyncio.wait({reading, denied}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    denied.cancel()
    if reading not in done:
        consumer.stop(now=True)
        await asyncio.wait_for(reading, 30)
    if run.recorder.denied:
        raise Denied(run.recorder.denied)
    stats = reading.result()

    # Then the queue's events went to the stream, every event counted once, the alert fired (and left the
    # item's outbox), and the poison record is in the DLQ with its shard and sequence number
    assert fed.stats.succeeded == 1 and fed.dead_letters == []
    assert stats.succeeded == len(records) + len(queued) and stats.dead_lettered == 1
    key = {"entity_id": {"S": student}, "entity_type": {"S": "student"}}
    table = run.settings.name_of(METRICS)
    item = (await run.admin.aws.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True))["Item"]
    assert item["ib_calls_14d"]["N"] == "4" and item["sessions_7d"]["N"] == "3"
    assert "alerted_high_ib_call_frequency" in item and "alert_high_ib_call_frequency" not in item
    _, dlq = await queue_urls(run.admin, EVENTS)
    (letter,) = await drain_queue(run.admin, dlq, wait=0)
    assert letter["Body"] == POISON_RECORD.decode()
    assert letter["MessageAttributes"]["fleet.sequence-number"]["StringValue"]
