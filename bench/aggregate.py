"""Aggregation: the fleet worker vs the seed's handler logic (get + put per entity touched), one emulator.

Workload (seed 004's events): 500 entities (375 students, 125 tutors) with Zipf popularity (s = 1.2), 95 % of
timestamps within the last 24 h and the rest over 40 days; sessions (half completed, most rated), IB calls,
health updates. Events carry no `event_id` (the seed's format), so no marker writes. A 4-shard stream, 4
consumers; partition key = the event's student, as `fleet submit events` does.

- Drain: the same pre-loaded events (the seed gets a 10,000-event subset: it is slow), events/s from the
  first read until every effect is durable (visible to a consistent read).
- Steady: 2,000 events/s for 30 s at the worker's default settings; write calls per event (every DynamoDB,
  EventBridge and SQS write call the consumers make; lease and checkpoint writes included) and freshness: for
  every 10th event, seconds from `put_records` until the event is visible in its entity's item (its shard's
  watermark there has passed it), polled every second (up to 50 entities a round, the longest-waiting first).
- Lost updates: each approach's stored figures against a single-threaded reference computation of the same
  events (the seed against its own semantics: counters only grow).

The emulator is fleet's embedded one (a moto subprocess), whose DynamoDB requests run one at a time as AWS
applies each conditional write atomically (shared/emulator.py); the seed's read-then-write races are across
requests and show up all the same.

    python bench/aggregate.py [--events 20000] [--seed-events 10000] [--rate 2000] [--seconds 30]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENTITIES = 500
SHARDS = 4
CONSUMERS = 4
TRACK_EVERY = 10  # freshness is timed for every 10th event
POLL_KEYS = 50  # entities read per freshness round
POLL_SECONDS = 1.0
WRITE_CALLS = {
    "dynamodb": {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"},
    "events": {"PutEvents"},
    "sqs": {"SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch"},
}

# --- workload and reference ---------------------------------------------------------------------------------


def zipf_events(
    rng: random.Random, n: int, *, entities: int = ENTITIES, now: datetime | None = None, ids: float = 0.0
) -> list[dict[str, Any]]:
    """Seed-shaped events over `entities` students and tutors (3:1), popularity Zipf s = 1.2, 95 % of them
    within the last 24 h, the rest over 40 days. A fraction `ids` carries an event_id."""
    now = now or datetime.now(UTC)
    students = [f"st-{i}" for i in range(entities * 3 // 4)]
    tutors = [f"tu-{i}" for i in range(entities - len(students))]
    sw = [1 / (k**1.2) for k in range(1, len(students) + 1)]
    tw = [1 / (k**1.2) for k in range(1, len(tutors) + 1)]
    tag = uuid.uuid4().hex[:6]
    out = []
    for i in range(n):
        ago = rng.uniform(0, 86400) if rng.random() < 0.95 else rng.uniform(86400, 40 * 86400)
        at = (now - timedelta(seconds=ago)).isoformat()
        student, tutor = rng.choices(students, sw)[0], rng.choices(tutors, tw)[0]
        r = rng.random()
        e: dict[str, Any]
        if r < 0.6:
            kind = "session_completed" if r < 0.3 else "session_started"
            payload: dict[str, Any] = {"student_id": student, "tutor_id": tutor}
            if kind == "session_completed" and rng.random() < 0.8:
                payload["tutor_rating"] = rng.choice([3, 3.5, 4, 4.5, 5])
            e = {"event_type": kind, "timestamp": at, "payload": payload}
        elif r < 0.9:
            e = {"event_type": "ib_call_logged", "timestamp": at, "payload": {"student_id": student}}
        else:
            score = rng.randint(40, 100)
            e = {
                "event_type": "customer_health_update",
                "timestamp": at,
                "payload": {"student_id": student, "health_score": score},
            }
        if rng.random() < ids:
            e["event_id"] = f"{tag}-{i}"
        out.append(e)
    return out


def reference(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (entity_type, entity_id), the contract's figures computed from scratch, one event at a time:
    windows of 7/14/30 days ending on the day of the entity's newest event, the true mean rating over 30 days,
    the newest health score. Events sharing an event_id count once."""
    seen: set[str] = set()
    touches: dict[tuple[str, str], list[tuple[datetime, str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("event_id") is not None:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
        at = datetime.fromisoformat(e["timestamp"]).astimezone(UTC)
        p, kind = e["payload"], e["event_type"]
        if kind in ("session_started", "session_completed"):
            if p.get("student_id"):
                touches[("student", p["student_id"])].append((at, "session", None))
            if p.get("tutor_id"):
                rating = p.get("tutor_rating") if kind == "session_completed" else None
                touches[("tutor", p["tutor_id"])].append((at, "session", rating))
        elif kind == "ib_call_logged":
            touches[("student", p["student_id"])].append((at, "ib", None))
        elif kind == "customer_health_update":
            touches[("student", p["student_id"])].append((at, "health", p["health_score"]))
        elif kind == "supply_demand_update":
            touches[("subject", p["subject"])].append((at, "supply", p.get("balance_status")))
    out = {}
    for key, items in touches.items():
        end = max(at for at, _, _ in items).date()

        def within(days: int, at: datetime, end: Any = end) -> bool:
            return bool(end - timedelta(days=days - 1) <= at.date() <= end)

        ratings = [Decimal(repr(r)) for at, kind, r in items if kind == "session" and r is not None and within(30, at)]
        health = max(((at, v) for at, kind, v in items if kind == "health"), default=None)
        out[key] = {
            "sessions_7d": sum(1 for at, k, _ in items if k == "session" and within(7, at)),
            "sessions_14d": sum(1 for at, k, _ in items if k == "session" and within(14, at)),
            "sessions_30d": sum(1 for at, k, _ in items if k == "session" and within(30, at)),
            "ib_calls_7d": sum(1 for at, k, _ in items if k == "ib" and within(7, at)),
            "ib_calls_14d": sum(1 for at, k, _ in items if k == "ib" and within(14, at)),
            "avg_rating": (sum(ratings) / len(ratings)).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)
            if ratings
            else Decimal(0),
            "health_score": Decimal(repr(health[1])) if health else Decimal(100),
            "events": len(items),
        }
    return out


FIGURES = (
    "sessions_7d",
    "sessions_14d",
    "sessions_30d",
    "ib_calls_7d",
    "ib_calls_14d",
    "avg_rating",
    "health_score",
    "events",
)


def figures(values: dict[str, Any]) -> dict[str, Decimal]:
    return {k: Decimal(str(values.get(k, 0))) for k in FIGURES}


def compare(stored: dict[tuple[str, str], dict[str, Any]], events: list[dict[str, Any]]) -> tuple[int, int]:
    """(events missing from the stored items, entities whose figures differ from the reference)."""
    want = reference(events)
    missing = wrong = 0
    for key, ref in want.items():
        got = figures(stored.get(key, {}))
        missing += max(0, int(ref["events"]) - int(got["events"]))
        wrong += got != figures(ref)
    return missing, wrong


# --- the seed's handler logic -------------------------------------------------------------------------------


class Seed:
    """Seed 004's handler as written, bugs included: for each entity an event touches, get the item, change
    it, put it back; then get the student (or tutor) again for the anomaly rules, and PutEvents every alert
    that holds (no cooldown). Lambda runs a shard's batch one record at a time; so does this."""

    def __init__(self, services: Any) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        from workers.aggregate.resources import ALERTS, METRICS

        self.ddb = services.aws.dynamodb
        self.bridge = services.aws.events
        self.table = services.settings.name_of(METRICS)
        self.bus = services.settings.name_of(ALERTS)
        self._ser, self._de = TypeSerializer(), TypeDeserializer()

    async def get(self, entity_id: str, entity_type: str) -> dict[str, Any]:
        resp = await self.ddb.get_item(
            TableName=self.table, Key={"entity_id": {"S": entity_id}, "entity_type": {"S": entity_type}}
        )
        if "Item" in resp:
            return {k: self._de.deserialize(v) for k, v in resp["Item"].items()}
        return {
            "entity_id": entity_id,
            "entity_type": entity_type,
            **{k: Decimal(0) for k in ("sessions_7d", "sessions_14d", "sessions_30d", "ib_calls_7d", "ib_calls_14d")},
            "avg_rating": Decimal(0),
            "health_score": Decimal(100),
        }

    async def put(self, item: dict[str, Any]) -> None:
        item["last_updated"] = datetime.now(UTC).isoformat()
        await self.ddb.put_item(TableName=self.table, Item={k: self._ser.serialize(v) for k, v in item.items()})

    async def handle(self, e: dict[str, Any]) -> None:
        kind, p = e["event_type"], e["payload"]
        if kind in ("session_started", "session_completed"):
            if p.get("student_id"):
                m = await self.get(p["student_id"], "student")
                for k in ("sessions_7d", "sessions_14d", "sessions_30d"):
                    m[k] += 1
                await self.put(m)
            if p.get("tutor_id"):
                m = await self.get(p["tutor_id"], "tutor")
                for k in ("sessions_7d", "sessions_14d", "sessions_30d"):
                    m[k] += 1
                if kind == "session_completed" and "tutor_rating" in p:
                    n = m["sessions_30d"]
                    m["avg_rating"] = Decimal(
                        str(round((float(m["avg_rating"]) * float(n - 1) + p["tutor_rating"]) / float(n), 6))
                    )
                await self.put(m)
        elif kind == "ib_call_logged":
            m = await self.get(p["student_id"], "student")
            m["ib_calls_7d"] += 1
            m["ib_calls_14d"] += 1
            await self.put(m)
        elif kind == "customer_health_update":
            m = await self.get(p["student_id"], "student")
            m["health_score"] = Decimal(str(p["health_score"]))
            m["sessions_7d"] = p.get("sessions_last_7_days", m["sessions_7d"])
            m["sessions_30d"] = p.get("sessions_last_30_days", m["sessions_30d"])
            m["ib_calls_14d"] = p.get("ib_calls_last_14_days", m["ib_calls_14d"])
            await self.put(m)
        metrics = None
        if p.get("student_id"):
            metrics = await self.get(p["student_id"], "student")
        elif p.get("tutor_id"):
            metrics = await self.get(p["tutor_id"], "tutor")
        alerts = []
        if metrics and metrics["entity_type"] == "student":
            if metrics["ib_calls_14d"] >= 3:
                alerts.append({"alert_type": "high_ib_call_frequency", "entity_id": metrics["entity_id"]})
            if float(metrics["health_score"]) < 70:
                alerts.append({"alert_type": "low_health_score", "entity_id": metrics["entity_id"]})
        if alerts:
            await self.bridge.put_events(
                Entries=[
                    {
                        "Source": "iops-dashboard.processor",
                        "DetailType": a["alert_type"],
                        "Detail": json.dumps(a),
                        "EventBusName": self.bus,
                    }
                    for a in alerts
                ]
            )


def seed_lost_increments(
    stored: dict[tuple[str, str], dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[int, int]:
    """(increments expected, increments lost) on the counters the seed only ever increments: every session on
    `sessions_14d` of its student and tutor, every IB call on the student's `ib_calls_7d`."""
    want: Counter[tuple[str, str, str]] = Counter()
    for e in events:
        p = e["payload"]
        if e["event_type"].startswith("session"):
            want[("student", p["student_id"], "sessions_14d")] += 1
            want[("tutor", p["tutor_id"], "sessions_14d")] += 1
        elif e["event_type"] == "ib_call_logged":
            want[("student", p["student_id"], "ib_calls_7d")] += 1
    lost = sum(max(0, n - int(stored.get((t, i), {}).get(f, 0))) for (t, i, f), n in want.items())
    return sum(want.values()), lost


# --- harness ------------------------------------------------------------------------------------------------


class CallCounter:
    """Write calls made through one process's clients, by service and operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def attach(self, services: Any) -> None:
        aws = services.aws
        for service, client in (
            ("dynamodb", aws.dynamodb),
            ("dynamodb", aws.dynamodb_once),
            ("events", aws.events),
            ("sqs", aws.sqs),
        ):
            client.meta.events.register(f"before-call.{service}", self._count(service))

    def _count(self, service: str) -> Any:
        def count(model: Any, **_: Any) -> None:
            if model.name in WRITE_CALLS[service]:
                self.calls[model.name] += 1

        return count

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@contextmanager
def quiet_logs() -> Iterator[None]:
    from shared.logs import configure_logging

    configure_logging("ERROR", "json", io.StringIO())  # logs cost the same for both; keep them off screen
    yield


async def prepare(url: str, label: str) -> Any:
    """Settings under a fresh prefix with every aggregate resource created, and a 4-shard stream."""
    from shared.app import open_services
    from shared.bootstrap import Bootstrapper
    from shared.registry import discover
    from shared.settings import load_settings
    from workers.aggregate.resources import EVENTS_STREAM

    settings = load_settings(
        endpoint_url=url, prefix=f"{label}{uuid.uuid4().hex[:6]}-", metrics_mode="off", health_dir="/tmp/fleet-bench"
    )
    async with open_services(settings) as services:
        registry = discover()
        await Bootstrapper(services.aws, registry).run([r for r in registry.resources() if r.kind != "stream"])
        kinesis = services.aws.kinesis
        name = settings.name_of(EVENTS_STREAM)
        await kinesis.create_stream(StreamName=name, ShardCount=SHARDS)
        waiter = kinesis.get_waiter("stream_exists")
        await waiter.wait(StreamName=name, WaiterConfig={"Delay": 1})
    return settings


async def put_events(services: Any, events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Put events as `fleet submit events` does; returns each one's (shard, sequence number)."""
    from workers.aggregate.events import parse_event, partition_key
    from workers.aggregate.resources import EVENTS_STREAM

    stream = services.settings.name_of(EVENTS_STREAM)
    out: list[tuple[str, str]] = []
    for start in range(0, len(events), 500):
        chunk = [json.dumps(e) for e in events[start : start + 500]]
        records: Any = [
            {
                "Data": line.encode(),
                "PartitionKey": partition_key(parse_event(line, now=time.time(), max_future_seconds=300)),
            }
            for line in chunk
        ]
        resp = await services.aws.kinesis.put_records(StreamName=stream, Records=records)
        assert not resp.get("FailedRecordCount"), resp
        out += [(r["ShardId"], r["SequenceNumber"]) for r in resp["Records"]]
    return out


async def stored_items(services: Any) -> dict[tuple[str, str], dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    from workers.aggregate.resources import METRICS

    de = TypeDeserializer()
    out = {}
    async for page in services.aws.dynamodb.get_paginator("scan").paginate(
        TableName=services.settings.name_of(METRICS), ConsistentRead=True
    ):
        for raw in page.get("Items", []):
            item = {k: de.deserialize(v) for k, v in raw.items()}
            out[(item["entity_type"], item["entity_id"])] = item
    return out


async def until(condition: Any) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.05)


class FleetConsumers:
    """CONSUMERS stream consumers, each with its own clients and aggregator, as separate tasks would have."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.counter = CallCounter()
        self.consumers: list[Any] = []
        self.stages: list[Any] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self._stack: Any = None

    async def start(self) -> None:
        from contextlib import AsyncExitStack

        from shared.app import open_services
        from shared.kinesis.consumer import StreamConsumer
        from shared.registry import discover
        from workers.aggregate.resources import EVENTS_STREAM
        from workers.aggregate.stage import AggregateStage

        self._stack = AsyncExitStack()
        tuning = discover().tuning(self.settings, "aggregate")  # the worker's defaults
        for _ in range(CONSUMERS):
            services = await self._stack.enter_async_context(open_services(self.settings, pool_size=tuning.pool_size))
            self.counter.attach(services)
            stage = AggregateStage(services)
            consumer = StreamConsumer(stage, services, stream_name=self.settings.name_of(EVENTS_STREAM), tuning=tuning)
            self.stages.append(stage)
            self.consumers.append(consumer)
            self.tasks.append(asyncio.create_task(consumer.run()))

    def durable(self) -> int:
        """Records whose effects are durable (each read once, plus any read again after a lease moved)."""
        return sum(c.stats.succeeded for c in self.consumers)

    def idle(self) -> bool:
        return all(not s.aggregator._pending and not s.aggregator._batches for s in self.stages)

    def aggregate_stats(self) -> dict[str, int]:
        stats = [s.aggregator.stats for s in self.stages]
        return {
            "entity_writes": sum(x.writes for x in stats),
            "races_lost": sum(x.conflicts for x in stats),
            "alerts_sent": sum(x.alerts_sent for x in stats),
        }

    async def stop(self) -> list[Any]:
        for c in self.consumers:
            c.stop()
        results = await asyncio.gather(*self.tasks)
        await self._stack.aclose()
        return list(results)


async def fleet_drain(url: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    from shared.app import open_services

    settings = await prepare(url, "fd")
    async with open_services(settings) as observer:
        await put_events(observer, events)
        consumers = FleetConsumers(settings)
        started = time.perf_counter()
        await consumers.start()
        await until(lambda: consumers.durable() >= len(events) and consumers.idle())
        elapsed = time.perf_counter() - started
        await consumers.stop()
        missing, wrong = compare(await stored_items(observer), events)
    return {
        "approach": "fleet",
        "events": len(events),
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "write_calls": consumers.counter.total,
        "write_calls_per_event": consumers.counter.total / len(events),
        "by_operation": dict(consumers.counter.calls.most_common()),
        "lost": missing,
        "entities_wrong": wrong,
        **consumers.aggregate_stats(),
    }


async def seed_drain(url: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    from shared.app import open_services
    from workers.aggregate.resources import EVENTS_STREAM

    settings = await prepare(url, "sd")
    async with open_services(settings) as observer, open_services(settings, pool_size=CONSUMERS * 4) as services:
        placed = await put_events(observer, events)
        per_shard = Counter(shard for shard, _ in placed)
        counter = CallCounter()
        counter.attach(services)
        seed = Seed(services)
        stream = settings.name_of(EVENTS_STREAM)

        async def shard_worker(shard: str, expected: int) -> None:
            kinesis = services.aws.kinesis
            it = (await kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"))[
                "ShardIterator"
            ]
            done = 0
            while done < expected:
                resp = await kinesis.get_records(ShardIterator=it, Limit=100)  # the seed's batchSize
                for r in resp["Records"]:
                    await seed.handle(json.loads(r["Data"]))
                done += len(resp["Records"])
                it = resp["NextShardIterator"]

        started = time.perf_counter()
        await asyncio.gather(*(shard_worker(s, n) for s, n in per_shard.items()))
        elapsed = time.perf_counter() - started
        expected, lost = seed_lost_increments(await stored_items(observer), events)
    return {
        "approach": "seed",
        "events": len(events),
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "write_calls": counter.total,
        "write_calls_per_event": counter.total / len(events),
        "by_operation": dict(counter.calls.most_common()),
        "lost": lost,
        "increments": expected,
    }


async def produce(url: str, prefix: str, rate: int, path: str) -> None:
    """The steady run's producer, in its own process (`--produce`): the events of `path` at `rate` a second, in
    4 batches a second, printing each batch's (student, shard, sequence number, wall-clock put time)."""
    from shared.app import open_services
    from shared.settings import load_settings
    from workers.aggregate.resources import EVENTS_STREAM

    settings = load_settings(endpoint_url=url, prefix=prefix, metrics_mode="off")
    tick = 0.25
    per_tick = int(rate * tick)
    lines = await asyncio.to_thread(lambda: Path(path).read_text().splitlines())
    async with open_services(settings) as services:
        stream = settings.name_of(EVENTS_STREAM)
        t0 = time.perf_counter()
        for n, start in enumerate(range(0, len(lines), per_tick)):
            await asyncio.sleep(max(0.0, t0 + n * tick - time.perf_counter()))
            batch = [json.loads(line) for line in lines[start : start + per_tick]]
            records: Any = [{"Data": json.dumps(e).encode(), "PartitionKey": e["payload"]["student_id"]} for e in batch]
            at = time.time()
            resp = await services.aws.kinesis.put_records(StreamName=stream, Records=records)
            assert not resp.get("FailedRecordCount"), resp
            placed = [[start + i, r["ShardId"], r["SequenceNumber"], at] for i, r in enumerate(resp["Records"])]
            print(json.dumps(placed), flush=True)


async def steady(url: str, rate: int, seconds: float, warmup: float) -> dict[str, Any]:
    """The worker at its default settings, fed `rate` events/s for `seconds` by another process."""
    from shared.app import open_services
    from shared.kinesis.records import sequence_key
    from workers.aggregate.resources import METRICS
    from workers.aggregate.store import MARK

    settings = await prepare(url, "st")
    sent: list[dict[str, Any]] = []
    waiting: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # student -> (shard, position, put at)
    latencies: list[tuple[float, float]] = []  # (put at, seconds until visible)
    marks: dict[str, tuple[int, int]] = {}  # write calls and events sent, at the end of the warm-up and at the end
    async with open_services(settings) as observer:
        consumers = FleetConsumers(settings)
        await consumers.start()
        await asyncio.sleep(3)  # leases taken: the clock starts with the first event
        events = zipf_events(random.Random(2000), int(rate * seconds))
        feed = Path(tempfile.mkdtemp(prefix="fleet-bench-")) / "events.ndjson"
        feed.write_text("".join(json.dumps(e) + "\n" for e in events))
        producer = await asyncio.create_subprocess_exec(
            *(sys.executable, __file__, "--produce", url, settings.prefix, str(rate), str(feed)),
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        assert producer.stdout is not None
        t0 = time.time()

        async def read_producer() -> None:
            assert producer.stdout is not None
            while line := await producer.stdout.readline():
                for index, shard, seq, at in json.loads(line):
                    if index % TRACK_EVERY == 0:
                        waiting[events[index]["payload"]["student_id"]].append((shard, sequence_key(seq), at))
                    sent.append(events[index])
                if "warm" not in marks and time.time() - t0 >= warmup:
                    marks["warm"] = (consumers.counter.total, len(sent))

        async def sample() -> None:
            table = settings.name_of(METRICS)
            names = {f"#w{i}": f"{MARK}shardId-{i:012d}" for i in range(SHARDS)}
            deadline = None
            while True:
                # The entities whose tracked events have waited longest, a bounded number a round: the sampler's
                # reads share the emulator with the workers' writes.
                students = sorted((s for s, w in waiting.items() if w), key=lambda s: waiting[s][0][2])[:POLL_KEYS]
                if reading.done():
                    if not students:
                        return
                    deadline = deadline or time.time() + 120
                    if time.time() > deadline:
                        return
                now = time.time()
                for start in range(0, len(students), 100):
                    keys = [
                        {"entity_id": {"S": s}, "entity_type": {"S": "student"}} for s in students[start : start + 100]
                    ]
                    resp = await observer.aws.dynamodb.batch_get_item(
                        RequestItems={
                            table: {
                                "Keys": keys,
                                "ConsistentRead": True,
                                "ProjectionExpression": ", ".join(["entity_id", *names]),
                                "ExpressionAttributeNames": names,
                            }
                        }
                    )
                    for item in resp["Responses"].get(table, []):
                        held = {k.removeprefix(MARK): v["S"] for k, v in item.items() if k.startswith(MARK)}
                        student = item["entity_id"]["S"]
                        visible = [w for w in waiting[student] if held.get(w[0], "") >= w[1]]
                        latencies.extend((at - t0, now - at) for _, _, at in visible)
                        waiting[student] = [w for w in waiting[student] if held.get(w[0], "") < w[1]]
                await asyncio.sleep(POLL_SECONDS)

        reading = asyncio.create_task(read_producer())
        await sample()
        await producer.wait()
        marks["end"] = (consumers.counter.total, len(sent))
        results = await consumers.stop()
        missing, wrong = compare(await stored_items(observer), sent)
    lat = sorted(latency for at, latency in latencies if at >= warmup)
    warm_calls, warm_events = marks.get("warm", (0, 0))
    end_calls, end_events = marks["end"]
    return {
        "events": len(sent),
        "seconds": seconds,
        "rate": len(sent) / seconds,
        "write_calls": consumers.counter.total,
        "write_calls_per_event": end_calls / max(1, end_events),
        "steady_write_calls_per_event": (end_calls - warm_calls) / max(1, end_events - warm_events),
        "by_operation": dict(consumers.counter.calls.most_common()),
        "freshness_p50": statistics.median(lat) if lat else None,
        "freshness_p95": lat[int(len(lat) * 0.95)] if lat else None,
        "freshness_max": lat[-1] if lat else None,
        "sampled": len(latencies),
        "never_visible": sum(len(w) for w in waiting.values()),
        "lost": missing,
        "entities_wrong": wrong,
        **consumers.aggregate_stats(),
        "leases_moved": sum(r.leases_stolen + r.leases_lost for r in results),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from shared.emulator import EmbeddedAws

    with quiet_logs(), EmbeddedAws(mode="process") as emulator:
        url = emulator.url
        events = zipf_events(random.Random(7), args.events)
        out: dict[str, Any] = {"warmup": args.warmup}
        if "drain" in args.phases:
            out["fleet"] = await fleet_drain(url, events)
            out["seed"] = await seed_drain(url, events[: args.seed_events])
        if "steady" in args.phases:
            out["steady"] = await steady(url, args.rate, args.seconds, args.warmup)
            if args.headroom_rate:
                out["headroom"] = await steady(url, args.headroom_rate, args.seconds, args.warmup)
    return out


def report(r: dict[str, Any]) -> dict[str, Any]:
    if "fleet" not in r or "steady" not in r:
        print(json.dumps(r, default=str, indent=1))
        return {}
    fleet, seed, st = r["fleet"], r["seed"], r["steady"]
    print(f"{'drain':<8}{'events':>8}{'seconds':>9}{'events/s':>10}{'writes':>8}{'writes/event':>14}{'lost':>6}")
    for d in (fleet, seed):
        print(
            f"{d['approach']:<8}{d['events']:>8}{d['seconds']:>9.1f}{d['events_per_s']:>10.1f}{d['write_calls']:>8}"
            f"{d['write_calls_per_event']:>14.3f}{d['lost']:>6}"
        )
    for d in (fleet, seed):
        print(f"  {d['approach']}: " + ", ".join(f"{op} {n}" for op, n in d["by_operation"].items()))
    speedup = fleet["events_per_s"] / seed["events_per_s"]
    print(
        f"fleet / seed: {speedup:.1f}x events/s (target >= 10x); fleet: {fleet['entity_writes']} entity writes, "
        f"{fleet['races_lost']} races lost and retried"
    )
    print(
        f"lost updates: fleet {fleet['lost']} ({fleet['entities_wrong']} entities differ from the reference), "
        f"seed {seed['lost']} of {seed['increments']} increments"
    )
    for label, run in (("steady", st), ("headroom", r.get("headroom"))):
        if run is not None:
            steady_lines(label, run, r["warmup"])
    return {
        "drain_fleet_events_per_s": round(fleet["events_per_s"], 1),
        "drain_seed_events_per_s": round(seed["events_per_s"], 1),
        "speedup": round(speedup, 2),
        "drain_fleet_events": fleet["events"],
        "drain_seed_events": seed["events"],
        "drain_fleet_write_calls_per_event": round(fleet["write_calls_per_event"], 4),
        "drain_seed_write_calls_per_event": round(seed["write_calls_per_event"], 4),
        "fleet_lost": fleet["lost"] + st["lost"],
        "fleet_entities_wrong": fleet["entities_wrong"] + st["entities_wrong"],
        "seed_lost_increments": seed["lost"],
        "seed_increments": seed["increments"],
        "steady_events": st["events"],
        "steady_rate": round(st["rate"], 1),
        "steady_write_calls_per_event": round(st["steady_write_calls_per_event"], 4),
        "overall_write_calls_per_event": round(st["write_calls_per_event"], 4),
        "freshness_p50_s": rnd(st["freshness_p50"]),
        "freshness_p95_s": rnd(st["freshness_p95"]),
        "freshness_max_s": rnd(st["freshness_max"]),
        "never_visible": st["never_visible"],
        **(
            {
                "headroom_rate": round(r["headroom"]["rate"], 1),
                "headroom_write_calls_per_event": round(r["headroom"]["steady_write_calls_per_event"], 4),
                "headroom_freshness_p95_s": rnd(r["headroom"]["freshness_p95"]),
                "headroom_lost": r["headroom"]["lost"],
            }
            if "headroom" in r
            else {}
        ),
    }


def steady_lines(label: str, st: dict[str, Any], warmup: float) -> None:
    print(
        f"{label}: {st['events']} events in {st['seconds']:.0f} s ({st['rate']:.0f}/s); write calls/event "
        f"{st['steady_write_calls_per_event']:.3f} after the first {warmup:.0f} s, "
        f"{st['write_calls_per_event']:.3f} overall (target <= 0.1)"
    )
    print(
        f"  freshness p50 {fmt(st['freshness_p50'])}, p95 {fmt(st['freshness_p95'])}, max {fmt(st['freshness_max'])} "
        f"(target p95 <= 10 s; {st['sampled']} events timed, {st['never_visible']} never seen); "
        f"lost {st['lost']} ({st['entities_wrong']} entities differ)"
    )
    print(
        "  "
        + ", ".join(f"{op} {n}" for op, n in st["by_operation"].items())
        + f"; {st['entity_writes']} entity writes, {st['races_lost']} races lost, {st['alerts_sent']} alerts, "
        f"leases moved {st['leases_moved']}"
    )


def fmt(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "-"


def rnd(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--produce"]:
        url, prefix, rate, path = sys.argv[2:6]
        asyncio.run(produce(url, prefix, int(rate), path))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="pre-loaded events for the fleet's drain")
    parser.add_argument("--seed-events", type=int, default=10_000, help="the seed's subset of them")
    parser.add_argument("--rate", type=int, default=2000, help="events/s in the steady run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the steady run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of the steady run not counted as steady")
    parser.add_argument("--phases", default="drain,steady", help="drain (both approaches), steady (fleet)")
    parser.add_argument(
        "--headroom-rate",
        type=int,
        default=500,
        help="a second steady run at a rate the emulator keeps up with (0: none)",
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(report(asyncio.run(main(parser.parse_args())))))
