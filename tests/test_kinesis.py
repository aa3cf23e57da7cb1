"""The shared Kinesis consumer (shared/kinesis) on the real emulator, with a small stage that records what it
was given: leases split and handed back, expiry and take-over, checkpoints only after durability, poison
records, reshard discovery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from shared.bootstrap import Bootstrapper
from shared.errors import Poison
from shared.kinesis.config import StreamTuning
from shared.kinesis.consumer import StreamConsumer
from shared.kinesis.leases import SHARD_END, LeaseStore
from shared.kinesis.records import StreamRecord
from shared.registry import discover
from shared.resources import LEASES
from shared.stage import Services
from tests.helpers import drain_queue, fast_tuning

APP = "kcount"


class RecordingStage:
    """Applies records idempotently (by position) in memory; `hold` keeps batches pending until released."""

    name = APP

    def __init__(self, *, hold: bool = False) -> None:
        self.applied: dict[str, bytes] = {}  # ident -> data
        self.hold = hold
        self.held: list[tuple[asyncio.Future[None], Sequence[tuple[StreamRecord, bytes]]]] = []

    def parse_record(self, record: StreamRecord) -> bytes:
        if record.data.startswith(b"poison"):
            raise Poison(f"cannot use {record.data.decode()!r}", code="TEST_POISON")
        return record.data

    async def submit(self, items: Sequence[tuple[StreamRecord, bytes]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append((future, items))
        else:
            self._apply(future, items)
        return future

    def _apply(self, future: asyncio.Future[None], items: Sequence[tuple[StreamRecord, bytes]]) -> None:
        for record, data in items:
            self.applied[record.ident] = data
        future.set_result(None)

    def release(self) -> None:
        for future, items in self.held:
            self._apply(future, items)
        self.held.clear()

    async def drain(self) -> None:
        self.release()


def tuning(**overrides: Any) -> StreamTuning:
    base: dict[str, Any] = {
        "lease_seconds": 3,
        "renew_seconds": 0.3,
        "sync_seconds": 0.5,
        "idle_seconds": 0.2,
        "checkpoint_seconds": 0,
    }
    return StreamTuning(**{**base, **overrides})


async def until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 30, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.1)


async def create_stream(services: Services, name: str, shards: int) -> None:
    kinesis = services.aws.kinesis
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    await until(lambda: _active(kinesis, name), 20, "stream ACTIVE")


async def _active(kinesis: Any, name: str) -> bool:
    summary = await kinesis.describe_stream_summary(StreamName=name)
    return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")


async def put(services: Services, stream: str, datas: list[bytes], key: Callable[[int], str] = str) -> list[str]:
    """Put records; returns the shard each went to."""
    resp = await services.aws.kinesis.put_records(
        StreamName=stream, Records=[{"Data": d, "PartitionKey": key(i)} for i, d in enumerate(datas)]
    )
    assert not resp.get("FailedRecordCount"), resp
    return [r["ShardId"] for r in resp["Records"]]


class Fixture:
    def __init__(self, services: Services, stream: str, dlq_url: str) -> None:
        self.services = services
        self.stream = stream
        self.dlq_url = dlq_url
        self.store = LeaseStore(services.aws.dynamodb, services.settings.name_of(LEASES), app=APP, stream=stream)
        self.running: list[tuple[StreamConsumer, asyncio.Task[Any]]] = []

    def start(self, stage: RecordingStage, **overrides: Any) -> StreamConsumer:
        consumer = StreamConsumer(
            stage,
            self.services,
            stream_name=self.stream,
            tuning=fast_tuning(drain_timeout=5),
            stream_tuning=tuning(**overrides),
            dlq_url=self.dlq_url,
        )
        self.running.append((consumer, asyncio.create_task(consumer.run())))
        return consumer

    async def owners(self, shards: list[str]) -> dict[str, str | None]:
        return {s: lease.owner for s, lease in (await self.store.load(shards)).items()}

    async def shard_ids(self) -> list[str]:
        resp = await self.services.aws.kinesis.list_shards(StreamName=self.stream)
        return [s["ShardId"] for s in resp["Shards"]]


@pytest.fixture
async def kin(services: Services) -> AsyncIterator[Fixture]:
    await Bootstrapper(services.aws, discover()).run([LEASES])
    stream = services.settings.name("kstream")
    dlq = (await services.aws.sqs.create_queue(QueueName=services.settings.name("kstream-dlq")))["QueueUrl"]
    fx = Fixture(services, stream, dlq)
    yield fx
    for consumer, _ in fx.running:
        consumer.stop(now=True)
    await asyncio.gather(*(t for _, t in fx.running), return_exceptions=True)


async def test_consumers_split_the_shards_and_a_stopped_one_hands_its_leases_back_at_once(kin: Fixture) -> None:
    # Given a 2-shard stream, a consumer holding both shards, and leases that only expire after a minute
    await create_stream(kin.services, kin.stream, 2)
    shards = await kin.shard_ids()
    a_stage, b_stage = RecordingStage(), RecordingStage()
    a = kin.start(a_stage, lease_seconds=60)
    await until(lambda: len(a.shards) == 2, what="a holds both shards")

    # When a second consumer starts, Then it takes its share: one shard each
    b = kin.start(b_stage, lease_seconds=60)
    await until(lambda: len(a.shards) == 1 and len(b.shards) == 1, what="one shard each")
    assert set(a.shards) | set(b.shards) == set(shards)
    owners = await kin.owners(shards)
    assert sorted(o or "" for o in owners.values()) == sorted([a.owner, b.owner])

    # And records on both shards are each read by exactly the consumer holding their shard
    went = await put(kin.services, kin.stream, [f"r{i}".encode() for i in range(40)])
    await until(lambda: len(a_stage.applied) + len(b_stage.applied) == 40, what="40 records applied")
    assert {i.split(":")[0] for i in a_stage.applied} == set(a.shards)
    assert {i.split(":")[0] for i in b_stage.applied} == set(b.shards)
    assert sorted(set(went)) == sorted(shards)

    # When a is stopped (SIGTERM), Then b holds both shards long before a minute-long lease could expire
    a.stop()
    stopped = time.monotonic()
    await until(lambda: len(b.shards) == 2, timeout=20, what="b takes a's shard")
    assert time.monotonic() - stopped < 15
    assert set((await kin.owners(shards)).values()) == {b.owner}


async def test_a_dead_workers_lease_is_taken_over_only_once_it_expires(kin: Fixture) -> None:
    # Given a 1-shard stream whose lease is held by a worker that died (its counter never moves again)
    await create_stream(kin.services, kin.stream, 1)
    (shard,) = await kin.shard_ids()
    await kin.store.ensure(shard, (), "TRIM_HORIZON")
    (seen,) = (await kin.store.load([shard])).values()
    assert await kin.store.take(seen, "ghost:1:dead") is not None
    await put(kin.services, kin.stream, [b"one", b"two"])

    # When a live consumer starts (3 s leases)
    stage = RecordingStage()
    consumer = kin.start(stage, lease_seconds=3)
    started = time.monotonic()

    # Then it leaves the lease alone while it could still be live, and takes it once it has expired
    await asyncio.sleep(1.5)
    assert consumer.shards == [] and (await kin.owners([shard]))[shard] == "ghost:1:dead"
    await until(lambda: consumer.shards == [shard], timeout=20, what="take-over")
    assert time.monotonic() - started >= 3
    await until(lambda: len(stage.applied) == 2, what="records read from the last checkpoint")


async def test_a_checkpoint_is_written_only_once_its_batch_is_durable(kin: Fixture) -> None:
    # Given a stage that keeps every batch pending, and a consumer reading a 1-shard stream
    await create_stream(kin.services, kin.stream, 1)
    (shard,) = await kin.shard_ids()
    stage = RecordingStage(hold=True)
    kin.start(stage)
    await put(kin.services, kin.stream, [b"a", b"b", b"c"])
    await until(lambda: sum(len(items) for _, items in stage.held) == 3, what="records submitted")

    # Then the checkpoint does not move while their effects are not durable
    await asyncio.sleep(1.0)
    (lease,) = (await kin.store.load([shard])).values()
    assert lease.checkpoint == "TRIM_HORIZON"

    # When the stage makes them durable, Then the checkpoint moves to the last of them
    last = max(int(r.sequence_number) for _, items in stage.held for r, _ in items)
    stage.release()

    async def checkpointed() -> bool:
        (lease,) = (await kin.store.load([shard])).values()
        return lease.checkpoint == str(last)

    await until(checkpointed, what="checkpoint at the last durable record")


async def test_a_poison_record_goes_to_the_dlq_with_its_shard_and_sequence_and_its_batch_goes_on(kin: Fixture) -> None:
    # Given a batch with a record its stage cannot parse in the middle
    await create_stream(kin.services, kin.stream, 1)
    (shard,) = await kin.shard_ids()
    await put(kin.services, kin.stream, [b"good-1", b"poison-pill", b"good-2"])
    stage = RecordingStage()

    # When a consumer reads it
    kin.start(stage)
    await until(lambda: len(stage.applied) == 2, what="the good records applied")

    # Then the rest of the batch was applied, and the bad record is in the DLQ with where it came from
    assert sorted(stage.applied.values()) == [b"good-1", b"good-2"]
    (letter,) = await drain_queue(kin.services, kin.dlq_url)
    attrs = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert letter["Body"] == "poison-pill"
    assert attrs["fleet.error-code"] == "TEST_POISON" and "cannot use" in attrs["fleet.error"]
    assert attrs["fleet.shard-id"] == shard and attrs["fleet.source-stream"] == kin.stream
    assert attrs["fleet.sequence-number"] == "2" and attrs["fleet.worker"] == APP


async def test_reshard_children_are_discovered_and_read_only_after_their_parent_is_finished(kin: Fixture) -> None:
    # Given a consumer reading a 1-shard stream
    await create_stream(kin.services, kin.stream, 1)
    (parent,) = await kin.shard_ids()
    consumer = kin.start(RecordingStage())
    await until(lambda: consumer.shards == [parent], what="parent leased")

    # When the shard is split
    await kin.services.aws.kinesis.split_shard(
        StreamName=kin.stream, ShardToSplit=parent, NewStartingHashKey=str(2**127)
    )
    children = sorted(set(await kin.shard_ids()) - {parent})
    assert len(children) == 2

    # Then the children get leases naming their parent, but nobody takes them while the parent is unfinished
    async def discovered() -> bool:
        return set((await kin.store.load(children)).keys()) == set(children)

    await until(discovered, what="child leases created")
    await asyncio.sleep(1.5)  # several balancing rounds
    leases = await kin.store.load(children)
    assert all(lease.parents == (parent,) and lease.owner is None for lease in leases.values())
    assert consumer.shards == [parent]

    # When the parent's checkpoint reaches its end (moto never ends a parent: the test drives it, as real
    # Kinesis would once the parent's last record is processed)
    await kin.services.aws.dynamodb.update_item(
        TableName=kin.services.settings.name_of(LEASES),
        Key=kin.store.key(parent),
        UpdateExpression="SET #k = :end REMOVE #o",
        ExpressionAttributeNames={"#k": "checkpoint", "#o": "owner"},
        ExpressionAttributeValues={":end": {"S": SHARD_END}},
    )

    # Then the consumer lets the parent go and takes both children
    await until(lambda: consumer.shards == children, what="children leased")
    assert all(lease.owner == consumer.owner for lease in (await kin.store.load(children)).values())


def test_shard_iterator_positions_compare_as_numbers() -> None:
    # moto numbers each shard from "1"; Kinesis uses 56-digit numbers: both must order correctly as strings
    from shared.kinesis.records import sequence_key

    assert (
        sequence_key("9")
        < sequence_key("10")
        < sequence_key("49590338271490256608559692538361571095921575989136588898")
    )
    with pytest.raises(ValueError):
        sequence_key("12a")
    assert json.dumps(sequence_key("1")).count("0") == 63
