"""`aggregate`: tutoring-platform events (seed 004) → true 7/14/30-day rolling metrics per student, tutor and
subject in `fleet-metrics`, written once per entity per flush → anomaly alerts on `fleet-alerts`.

It reads the Kinesis stream `fleet-events` with the shared KCL-style consumer (`shared.kinesis`); the SQS
queue `fleet-events` feeds the same stream. See README.md in this package."""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from shared.kinesis import consumer_uses
from workers.aggregate.resources import ALERTS, EVENTS, EVENTS_STREAM, METRICS, SEEN

WORKER = WorkerSpec(
    name="aggregate",
    summary="events → true 7/14/30-day rolling metrics per entity, coalesced conditional writes → alerts",
    stage="workers.aggregate.stage:AggregateStage",
    queue=EVENTS,
    stream=EVENTS_STREAM,
    uses=(
        *consumer_uses(EVENTS_STREAM),
        uses(EVENTS_STREAM, "kinesis:PutRecords"),  # the SQS feed
        uses(METRICS, "dynamodb:BatchGetItem", "dynamodb:UpdateItem"),
        uses(SEEN, "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"),
        uses(ALERTS, "events:PutEvents"),
    ),
    submit="workers.aggregate.submit:register",
    cli="workers.aggregate.cli:register",
    demo="workers.aggregate.demo:demo",
    demo_order=40,
)
