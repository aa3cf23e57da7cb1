"""The aggregate worker on the real emulator: exact windows, replays counted once, alerts once per cooldown,
poison records, the SQS feed, many consumers against a single-threaded reference."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bench.aggregate import figures, reference, zipf_events
from shared.app import run_workers
from shared.kinesis.config import StreamTuning
from shared.kinesis.consumer import StreamConsumer
from shared.settings import FleetSettings
from shared.stage import Services
from tests.helpers import drain_queue, fast_tuning, queue_urls, send
from tests.test_aggregate_windows import want
from tests.test_kinesis import create_stream
from workers.aggregate.config import AggregateConfig
from workers.aggregate.resources import ALERTS, EVENTS, EVENTS_STREAM, METRICS
from workers.aggregate.stage import AggregateStage
from workers.aggregate.submit import submit_events

FAST = {
    "FLEET_AGGREGATE_FLUSH_INTERVAL_SECONDS": "0.2",
    "FLEET_AGGREGATE_MAX_DELAY_SECONDS": "0.4",
    "FLEET_STREAM_LEASE_SECONDS": "3",
    "FLEET_STREAM_RENEW_SECONDS": "0.3",
    "FLEET_STREAM_SYNC_SECONDS": "1",
    "FLEET_STREAM_IDLE_SECONDS": "0.2",
    "FLEET_STREAM_CHECKPOINT_SECONDS": "0.2",
}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    return FAST


def now() -> datetime:
    return datetime.now(UTC)


def event(kind: str, at: datetime, event_id: str | None = None, **payload: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_type": kind, "timestamp": at.isoformat(), "payload": payload}
    if event_id is not None:
        out["event_id"] = event_id
    return out


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(e) for e in events]


def workload(
    rng: random.Random, n: int, *, entities: int = 20, days: float = 40, ids: float = 0.5
) -> list[dict[str, Any]]:
    """Seed-shaped events: sessions (some rated), IB calls, health and supply updates; some carry an event_id."""
    out = []
    students = max(1, entities * 3 // 4)
    tutors = max(1, entities - students)
    for i in range(n):
        at = now() - timedelta(seconds=rng.uniform(0, days * 86400))
        student, tutor = f"st-{rng.randrange(students)}", f"tu-{rng.randrange(tutors)}"
        kind = rng.choices(
            [
                "session_started",
                "session_completed",
                "ib_call_logged",
                "customer_health_update",
                "supply_demand_update",
            ],
            [30, 30, 20, 10, 10],
        )[0]
        event_id = f"ev-{i}" if rng.random() < ids else None
        if kind.startswith("session"):
            extra = {"tutor_rating": rng.choice([2, 3.5, 4, 5])} if kind == "session_completed" else {}
            out.append(event(kind, at, event_id, student_id=student, tutor_id=tutor, **extra))
        elif kind == "ib_call_logged":
            out.append(event(kind, at, event_id, student_id=student))
        elif kind == "customer_health_update":
            out.append(event(kind, at, event_id, student_id=student, health_score=round(rng.uniform(40, 100), 1)))
        else:
            out.append(event(kind, at, event_id, subject=f"sub-{rng.randrange(3)}", balance_status="balanced"))
    return out


async def stored(services: Services) -> dict[tuple[str, str], dict[str, Any]]:
    """Every entity item's compared figures."""
    out = {}
    paginator = services.aws.dynamodb.get_paginator("scan")
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    async for page in paginator.paginate(TableName=services.settings.name_of(METRICS), ConsistentRead=True):
        for raw in page.get("Items", []):
            item = {k: de.deserialize(v) for k, v in raw.items()}
            out[(item["entity_type"], item["entity_id"])] = figures(item)
    return out


async def burst(settings: FleetSettings, **tuning: Any) -> dict[str, Any]:
    """`fleet worker aggregate --burst`, in process: both consumers until the queue and the stream are done."""
    tuned = {"burst_idle_seconds": 1, "wait_time_seconds": 1, **tuning}
    settings = settings.model_copy(update={"workers": {**settings.workers, "aggregate": tuned}})
    return await asyncio.wait_for(run_workers(settings, ["aggregate"], burst=True, install_signals=False), 120)


async def test_events_over_40_days_give_exact_7_14_30_day_windows(fleet: Services, fast: dict[str, str]) -> None:
    # Given 300 events over 40 days for 20 entities, late and out of order, half with event ids, on both shards
    events = workload(random.Random(40), 300)
    put, _ = await submit_events(fleet, lines(events), quiet=True)
    assert put == 300

    # When the worker has read the stream
    stats = await burst(fleet.settings)

    # Then every entity's windows equal the single-threaded reference, to the rating's fourth decimal
    assert stats["aggregate.stream"].succeeded == 300
    assert await stored(fleet) == want(events)


async def test_replayed_event_ids_count_once_whichever_way_they_come_back(
    fleet: Services, fast: dict[str, str]
) -> None:
    # Given events with ids, read and counted
    rng = random.Random(5)
    events = [dict(e, event_id=f"id-{i}") for i, e in enumerate(workload(rng, 60, entities=6, days=10))]
    await submit_events(fleet, lines(events), quiet=True)
    await burst(fleet.settings)
    first = await stored(fleet)
    assert first == want(events)

    # When the same events come back: submitted again (new records on the stream), and through the SQS queue
    await submit_events(fleet, lines(events[:30]), quiet=True)
    url, _ = await queue_urls(fleet, EVENTS)
    await send(fleet, url, [{"events": events[30:]}])
    stats = await burst(fleet.settings)

    # Then they were read again, and counted once
    assert stats["aggregate"].succeeded == 1
    assert stats["aggregate.stream"].succeeded == 60
    assert await stored(fleet) == first


async def test_each_alert_rule_fires_once_per_cooldown(fleet: Services, fast: dict[str, str]) -> None:
    # Given a queue receiving everything on the alerts bus (cooldown: the default hour)
    tap = await alert_tap(fleet)
    t = now()

    def trigger(round_: int) -> list[dict[str, Any]]:
        # rule 1: 4 IB calls in 14 days; rule 2: health under 50 twice; rule 3: high demand twice
        demand = {"subject": "algebra", "balance_status": "high_demand", "demand_score": 9.5, "supply_score": 2}
        return [
            *(event("ib_call_logged", t - timedelta(hours=i), student_id="st-ib") for i in range(4)),
            event("customer_health_update", t - timedelta(minutes=round_), student_id="st-low", health_score=42),
            event("customer_health_update", t - timedelta(minutes=round_ + 1), student_id="st-low", health_score=44),
            *(event("supply_demand_update", t - timedelta(minutes=i), **demand) for i in range(2)),
        ]

    rules = ["high_ib_call_frequency", "low_health_score", "supply_demand_imbalance"]

    # When events that make each rule hold, again and again, are read
    await submit_events(fleet, lines(trigger(0)), quiet=True)
    await burst(fleet.settings)
    alerts = await read_alerts(fleet, tap)

    # Then each rule fired once, on the bus, with the seed's Detail
    assert sorted(a["detail-type"] for a in alerts) == rules
    by_type = {a["detail-type"]: a for a in alerts}
    assert all(a["source"] == "fleet.aggregate" for a in alerts)
    low = by_type["low_health_score"]["detail"]
    assert low["severity"] == "critical" and low["entity_id"] == "st-low" and low["details"]["health_score"] == 42.0
    assert by_type["high_ib_call_frequency"]["detail"]["details"]["ib_calls_14d"] == 4
    message = by_type["supply_demand_imbalance"]["detail"]["message"]
    assert message == "High demand detected for algebra (Demand: 9.5, Supply: 2)"

    # When more such events come within the cooldown, Then nothing is sent again
    await submit_events(fleet, lines(trigger(1)), quiet=True)
    await burst(fleet.settings)
    assert await read_alerts(fleet, tap) == []

    # When the cooldown has passed (the items' last firing moved an hour back), Then each fires once more
    for entity_type, entity_id in (("student", "st-ib"), ("student", "st-low"), ("subject", "algebra")):
        await age_alerts(fleet, entity_type, entity_id, seconds=3601)
    await submit_events(fleet, lines(trigger(2)), quiet=True)
    await burst(fleet.settings)
    again = await read_alerts(fleet, tap)
    assert sorted(a["detail-type"] for a in again) == rules
    assert not {a["detail"]["alert_id"] for a in again} & {a["detail"]["alert_id"] for a in alerts}


async def age_alerts(services: Services, entity_type: str, entity_id: str, *, seconds: float) -> None:
    ddb = services.aws.dynamodb
    table = services.settings.name_of(METRICS)
    key = {"entity_id": {"S": entity_id}, "entity_type": {"S": entity_type}}
    item = (await ddb.get_item(TableName=table, Key=key, ConsistentRead=True))["Item"]
    fired = [name for name in item if name.startswith("alerted_")]
    names = {f"#a{i}": name for i, name in enumerate(fired)}
    await ddb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="SET " + ", ".join(f"{n} = {n} - :s" for n in names) + " ADD ver :one",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues={":s": {"N": str(seconds)}, ":one": {"N": "1"}},
    )


async def alert_tap(services: Services) -> str:
    """A queue that receives every event on the alerts bus."""
    sqs, bridge = services.aws.sqs, services.aws.events
    bus = services.settings.name_of(ALERTS)
    url = (await sqs.create_queue(QueueName=services.settings.name("alert-tap")))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    rule = services.settings.name("alert-tap")
    await bridge.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps({"source": ["fleet.aggregate"]}))
    await bridge.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "tap", "Arn": arn}])
    return url


async def read_alerts(services: Services, url: str) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in await drain_queue(services, url, wait=1)]


async def test_a_poison_record_does_not_stop_its_batch(fleet: Services, fast: dict[str, str]) -> None:
    # Given one shard's batch with two bad records among good ones (not JSON; an unknown event type)
    stream = fleet.settings.name_of(EVENTS_STREAM)
    good = [event("session_started", now(), student_id="st-1", tutor_id="tu-1") for _ in range(3)]
    datas = [
        json.dumps(good[0]),
        "{not json",
        json.dumps(good[1]),
        json.dumps(event("lesson_planned", now())),
        json.dumps(good[2]),
    ]
    resp = await fleet.aws.kinesis.put_records(
        StreamName=stream, Records=[{"Data": d.encode(), "PartitionKey": "st-1"} for d in datas]
    )
    shard = resp["Records"][0]["ShardId"]

    # When the worker reads it
    stats = await burst(fleet.settings)

    # Then the good records all count, and the bad ones are in the DLQ with their shard and sequence number
    assert (await stored(fleet))[("student", "st-1")]["sessions_7d"] == 3
    assert stats["aggregate.stream"].dead_lettered == 2
    _, dlq = await queue_urls(fleet, EVENTS)
    letters = await drain_queue(fleet, dlq, wait=0)
    got = {
        m["MessageAttributes"]["fleet.sequence-number"]["StringValue"]: (
            m["Body"],
            m["MessageAttributes"]["fleet.error-code"]["StringValue"],
            m["MessageAttributes"]["fleet.shard-id"]["StringValue"],
        )
        for m in letters
    }
    seqs = [r["SequenceNumber"] for r in resp["Records"]]
    assert got == {seqs[1]: ("{not json", "NOT_JSON", shard), seqs[3]: (datas[3], "INVALID", shard)}


async def test_sqs_messages_feed_the_same_aggregation_and_bad_ones_are_dead_lettered(
    fleet: Services, fast: dict[str, str]
) -> None:
    # Given a single event, a batch of events, and two malformed messages on the queue
    url, dlq = await queue_urls(fleet, EVENTS)
    single = event("ib_call_logged", now(), student_id="st-q")
    batch = [event("session_completed", now(), student_id="st-q", tutor_id="tu-q", tutor_rating=4.5) for _ in range(3)]
    await send(
        fleet,
        url,
        [single, {"events": batch}, {"events": [single, {"event_type": "session_started"}]}, "not json"],
    )

    # When the worker runs
    stats = await burst(fleet.settings)

    # Then the good messages' events are counted (via the stream), and the bad messages are in the DLQ with why
    assert stats["aggregate"].succeeded == 2 and stats["aggregate"].dead_lettered == 2
    counted = await stored(fleet)
    assert counted[("student", "st-q")] == figures(reference([single, *batch])[("student", "st-q")])
    reasons = sorted(
        m["MessageAttributes"]["fleet.error"]["StringValue"] for m in await drain_queue(fleet, dlq, wait=0)
    )
    assert reasons[0].startswith("body is not JSON")
    assert reasons[1].startswith("events.1: invalid event: timestamp: Field required")


async def test_four_consumers_on_many_events_lose_no_update(services: Services, fast: dict[str, str]) -> None:
    """4 consumers (each with its own aggregator, as 4 processes would have) on a 4-shard stream; 10,000
    events over 500 entities, Zipf-popular, so many entities are written by several consumers at once."""
    from shared.bootstrap import Bootstrapper
    from shared.registry import discover

    stream = "events4"
    settings = services.settings.model_copy(update={"streams": {"events": stream}})
    services.settings = settings
    await Bootstrapper(services.aws, discover()).run([r for r in discover().resources() if r.kind != "stream"])
    await create_stream(services, settings.name_of(EVENTS_STREAM), 4)
    events = zipf_events(random.Random(4), 10_000, ids=0.5)
    await submit_events(services, lines(events), quiet=True)

    config = AggregateConfig(flush_interval_seconds=0.2, max_delay_seconds=0.4)
    stream_tuning = StreamTuning(lease_seconds=5, renew_seconds=0.5, idle_seconds=0.2, checkpoint_seconds=0.5)
    consumers = [
        StreamConsumer(
            AggregateStage(services, config),
            services,
            stream_name=settings.name_of(EVENTS_STREAM),
            tuning=fast_tuning(burst_idle_seconds=1.5, drain_timeout=30),
            stream_tuning=stream_tuning,
            burst=True,
        )
        for _ in range(4)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(c.run() for c in consumers)), 150)

    assert sum(r.succeeded for r in results) >= 10_000
    assert all(r.leases_taken + r.leases_stolen >= 1 for r in results), results
    assert await stored(services) == want(events)


async def test_the_emulator_applies_each_conditional_write_atomically(fleet: Services) -> None:
    """The lost-update tests measure the worker only if the emulator, like AWS, applies a conditional write's
    check and change as one (shared/emulator.py patches moto, which does not)."""
    ddb, table = fleet.aws.dynamodb, fleet.settings.name_of(METRICS)
    key = {"entity_id": {"S": "cas"}, "entity_type": {"S": "student"}}
    padding = {f"pad_{i}": {"S": "x" * 40} for i in range(60)}  # a wide item: a longer window for a race
    await ddb.put_item(TableName=table, Item={**key, "ver": {"N": "0"}, "n": {"N": "0"}, **padding})
    accepted = 0

    async def writer() -> None:
        nonlocal accepted
        item = (await ddb.get_item(TableName=table, Key=key, ConsistentRead=True))["Item"]
        for _ in range(25):
            ver, n = int(item["ver"]["N"]), int(item["n"]["N"])
            try:
                await ddb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET n = :n ADD ver :one",
                    ConditionExpression="ver = :ver",
                    ExpressionAttributeValues={":n": {"N": str(n + 1)}, ":one": {"N": "1"}, ":ver": {"N": str(ver)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                accepted += 1
                item = {**item, "ver": {"N": str(ver + 1)}, "n": {"N": str(n + 1)}}
            except ClientError as exc:
                item = exc.response["Item"]  # type: ignore[typeddict-item]

    # When 8 writers compare-and-set one item at once
    await asyncio.gather(*(writer() for _ in range(8)))

    # Then every accepted write took effect, each on the value it was computed from
    final = (await ddb.get_item(TableName=table, Key=key, ConsistentRead=True))["Item"]
    assert int(final["n"]["N"]) == int(final["ver"]["N"]) == accepted


async def test_an_entitys_events_are_coalesced_into_one_write_per_flush(fleet: Services) -> None:
    # Given 60 events over 10 days for one student and one tutor, from two shards, in three batches
    from collections import Counter

    from shared.kinesis.records import StreamRecord
    from workers.aggregate.events import parse_event

    stage = AggregateStage(fleet, AggregateConfig(flush_interval_seconds=60, max_delay_seconds=60))
    calls: Counter[str] = Counter()
    fleet.aws.dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))
    t = now()
    records = []
    for i in range(60):
        e = event(
            "session_completed",
            t - timedelta(days=i % 10),
            f"co-{i}",
            student_id="st-co",
            tutor_id="tu-co",
            tutor_rating=4,
        )
        data = json.dumps(e).encode()
        records.append(StreamRecord("s", f"shard-{i % 2}", str(i + 1), "st-co", data))
    futures = []
    for start in (0, 20, 40):
        batch = [
            (r, parse_event(r.data, now=t.timestamp(), max_future_seconds=300)) for r in records[start : start + 20]
        ]
        futures.append(await stage.submit(batch))

    # When the flush writes them
    await stage.drain()
    await asyncio.gather(*futures)

    # Then each entity got one UpdateItem for all its days, and the event ids one batch of markers
    assert calls["UpdateItem"] == 2
    assert calls["BatchWriteItem"] == 3  # 60 markers, 25 a call
    assert (await stored(fleet))[("student", "st-co")]["sessions_14d"] == 60
