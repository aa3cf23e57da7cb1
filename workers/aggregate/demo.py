"""The aggregate step of `fleet demo`: the sample events (moved to end now) on the stream, two more through
the SQS queue, one poison record; the worker reads them all; a table of the top entities and the alerts raised."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.app import open_services, run_workers
from shared.emulator import temporary_env
from shared.resources import DeadLetters
from shared.settings import FleetSettings
from shared.stage import Services
from workers.aggregate.events import parse_time
from workers.aggregate.resources import ALERTS, EVENTS, EVENTS_STREAM, METRICS
from workers.aggregate.store import MetricsTable
from workers.aggregate.submit import submit_events

SAMPLES = Path(__file__).parent / "samples" / "events.ndjson"
TAP = "fleet-aggregate-demo-tap"
# Short timers: the demo's few events are written within a second, not the production 1-5 s.
QUICK = {
    "FLEET_AGGREGATE_FLUSH_INTERVAL_SECONDS": "0.2",
    "FLEET_AGGREGATE_MAX_DELAY_SECONDS": "0.4",
    "FLEET_STREAM_RENEW_SECONDS": "0.3",
    "FLEET_STREAM_IDLE_SECONDS": "0.2",
    "FLEET_STREAM_CHECKPOINT_SECONDS": "0.2",
}


def sample_lines(now: datetime | None = None) -> list[dict[str, Any]]:
    """The sample events, moved in time so the newest is an hour old (their spacing kept)."""
    events = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    newest = max(parse_time(e["timestamp"]) for e in events)
    shift = (now or datetime.now(UTC)) - timedelta(hours=1) - newest
    for e in events:
        e["timestamp"] = (parse_time(e["timestamp"]) + shift).isoformat()
    return events


async def tap_alerts(services: Services) -> tuple[str, str]:
    """A queue receiving everything on the alerts bus (rule name, queue URL)."""
    sqs, bridge = services.aws.sqs, services.aws.events
    name = services.settings.name(TAP)
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    bus = services.settings.name_of(ALERTS)
    await bridge.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps({"source": ["fleet.aggregate"]}))
    await bridge.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "tap", "Arn": arn}])
    return name, url


async def drain(services: Services, url: str) -> list[dict[str, Any]]:
    """Every message on the queue, deleted as read."""
    sqs = services.aws.sqs
    out: list[dict[str, Any]] = []
    while True:
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        if not resp.get("Messages"):
            return out
        for m in resp["Messages"]:
            out.append(json.loads(m["Body"]))
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


async def demo(settings: FleetSettings, console: Console) -> None:
    events = sample_lines()
    async with open_services(settings) as services:
        rule, tap = await tap_alerts(services)
        put, _ = await submit_events(services, [json.dumps(e) for e in events[:-2]], quiet=True)
        queue = (await services.aws.sqs.get_queue_url(QueueName=settings.name_of(EVENTS)))["QueueUrl"]
        await services.aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"events": events[-2:]}))
        await services.aws.kinesis.put_record(
            StreamName=settings.name_of(EVENTS_STREAM), Data=b'{"event_type": "session_started"}', PartitionKey="x"
        )
    console.print(
        f"put {put} sample events + 1 poison record on {settings.name_of(EVENTS_STREAM)}, "
        f"and 2 events on the queue {settings.name_of(EVENTS)}"
    )

    tuned = settings.model_copy(
        update={"workers": {**settings.workers, "aggregate": {"burst_idle_seconds": 1, "wait_time_seconds": 1}}}
    )
    with temporary_env(QUICK):
        stats = await run_workers(tuned, ["aggregate"], burst=True, install_signals=False)
    stream = stats["aggregate.stream"]
    console.print(
        f"aggregate (burst): {stream.received} records read, {stream.dead_lettered} to the failed-records queue; "
        f"{stats['aggregate'].succeeded} SQS message fed to the stream"
    )

    async with open_services(settings) as services:
        items = await scan(services)
        people = [i for i in items if i["entity_type"] != "subject"]
        top = Table("entity", "type", "7d", "14d", "30d", "IB 7d", "IB 14d", "avg rating", "health", "window end")
        for item in sorted(people, key=lambda i: (-int(i.get("sessions_30d", 0)), i["entity_id"]))[:8]:
            figures = ("sessions_7d", "sessions_14d", "sessions_30d", "ib_calls_7d", "ib_calls_14d", "avg_rating")
            top.add_row(
                item["entity_id"],
                item["entity_type"],
                *(str(item.get(k, 0)) for k in figures),
                str(item.get("health_score", "")),
                str(item.get("window_end", "")),
            )
        console.print(top)
        subjects = Table("subject", "region", "tutors", "students", "demand", "supply", "balance")
        for item in sorted((i for i in items if i["entity_type"] == "subject"), key=lambda i: str(i["entity_id"])):
            fields = ("region", "available_tutors", "active_students", "demand_score", "supply_score", "balance_status")
            subjects.add_row(item["entity_id"], *(str(item.get(k, "")) for k in fields))
        console.print(subjects)
        alerts = Table("alert", "severity", "entity", "message")
        for alert in sorted(await drain(services, tap), key=lambda a: a["detail-type"]):
            d = alert["detail"]
            alerts.add_row(alert["detail-type"], d["severity"], f"{d['entity_type']} {d['entity_id']}", d["message"])
        console.print(alerts)
        dlq = (await services.aws.sqs.get_queue_url(QueueName=settings.name_of(DeadLetters.of(EVENTS))))["QueueUrl"]
        for letter in await drain_letters(services, dlq):
            console.print(f"failed record (fleet dlq aggregate): {letter}")
        await services.aws.events.remove_targets(Rule=rule, EventBusName=settings.name_of(ALERTS), Ids=["tap"])
        await services.aws.events.delete_rule(Name=rule, EventBusName=settings.name_of(ALERTS))
        await services.aws.sqs.delete_queue(QueueUrl=tap)


async def scan(services: Services) -> list[dict[str, Any]]:
    return await MetricsTable(services.aws.dynamodb, services.settings.name_of(METRICS)).scan()


async def drain_letters(services: Services, url: str) -> list[str]:
    sqs = services.aws.sqs
    resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    out = []
    for m in resp.get("Messages", []):
        a = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
        out.append(f"shard {a.get('fleet.shard-id')} #{a.get('fleet.sequence-number')}: {a.get('fleet.error')}")
        await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return out
