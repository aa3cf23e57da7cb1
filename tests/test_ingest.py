"""The ingest worker over the real emulator: tracking once, manifests of 200, crash-safe hand-off."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote_plus

import pytest

from shared.app import open_services
from shared.resources import Queue
from shared.runtime import Worker
from shared.settings import FleetSettings, WorkerTuning
from shared.stage import Services
from tests.helpers import drain_queue, fast_tuning, queue_urls, send
from workers.ingest.config import IngestConfig
from workers.ingest.events import parse_notification
from workers.ingest.layout import Manifest
from workers.ingest.resources import COMPACT, FILES, INGEST, LAKE, LANDING
from workers.ingest.stage import IngestStage

DATE = "2024-03-01"


def tuning(**overrides: Any) -> WorkerTuning:
    return fast_tuning(**{"burst_idle_seconds": 1.5, **overrides})


def s3_event(
    bucket: str,
    key: str,
    etag: str,
    *,
    event: str = "ObjectCreated:Put",
    size: int = 100,
    time: str = "2024-03-01T10:00:00.000Z",
) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": time,
                "eventName": event,
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": quote_plus(key), "size": size, "eTag": etag},
                },
            }
        ]
    }


def etag_of(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
async def roomy(fleet: Services) -> AsyncIterator[Services]:
    """Services with a connection pool large enough for three workers in one process."""
    async with open_services(fleet.settings, pool_size=120) as services:
        yield services


def settled(workers: list[Worker]) -> int:
    return sum(w.stats.succeeded + w.stats.dead_lettered for w in workers)


async def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def feed(services: Services, bodies: list[dict[str, Any]], workers: list[Worker], depth: int = 80) -> None:
    """Send bodies in batches of 10, never letting the queue get deeper than `depth` (moto's receive
    costs time linear in queue depth)."""
    url, _ = await queue_urls(services, INGEST)
    for start in range(0, len(bodies), 10):
        await wait_until(lambda sent=start: sent - settled(workers) <= depth)  # type: ignore[misc]
        await send(services, url, bodies[start : start + 10])


async def run_until_handled(services: Services, stage: IngestStage, messages: int) -> Worker:
    """Run a worker until it has settled `messages` messages. (A burst worker would wait for the max
    wait to flush the pending files first.)"""
    worker = await Worker.create(stage, services, queue=INGEST, tuning=tuning(), burst=False)
    running = asyncio.create_task(worker.run())
    await wait_until(lambda: settled([worker]) >= messages)
    worker.stop()
    await asyncio.wait_for(running, 30)
    return worker


async def lake_manifests(services: Services, date_prefix: str = DATE) -> list[Manifest]:
    s3, lake = services.aws.s3, services.settings.name_of(LAKE)
    listed = await s3.list_objects_v2(Bucket=lake, Prefix=f"manifests/{date_prefix}/")
    out = []
    for obj in listed.get("Contents", []):
        raw = await (await s3.get_object(Bucket=lake, Key=obj["Key"]))["Body"].read()
        out.append(Manifest.model_validate(json.loads(raw)))
    return out


async def compact_jobs(services: Services) -> list[dict[str, Any]]:
    url, _ = await queue_urls(services, COMPACT)
    return [json.loads(m["Body"]) for m in await drain_queue(services, url, wait=0)]


async def file_items(services: Services, date_prefix: str = DATE) -> list[dict[str, Any]]:
    ddb, table = services.aws.dynamodb, services.settings.name_of(FILES)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    while True:
        resp = await ddb.query(
            TableName=table,
            KeyConditionExpression="date_prefix = :d AND begins_with(file_key, :f)",
            ExpressionAttributeValues={":d": {"S": date_prefix}, ":f": {"S": "f#"}},
            ConsistentRead=True,
            **kwargs,
        )
        items += resp.get("Items", [])
        if "LastEvaluatedKey" not in resp:
            return items
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


async def manifest_state(services: Services, manifest_id: str, date_prefix: str = DATE) -> str:
    resp = await services.aws.dynamodb.get_item(
        TableName=services.settings.name_of(FILES),
        Key={"date_prefix": {"S": date_prefix}, "file_key": {"S": f"m#{manifest_id}"}},
        ConsistentRead=True,
    )
    return str(resp["Item"]["state"]["S"])


async def queue_depth(services: Services, key: Queue) -> int:
    url, _ = await queue_urls(services, key)
    attrs = await services.aws.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    return sum(int(v) for v in attrs["Attributes"].values())


# --- parsing -------------------------------------------------------------------------------------------


def test_a_notification_is_decoded_and_dated_from_its_folder_or_its_event_time() -> None:
    # Given S3 notifications, one SNS-wrapped, with URL-encoded keys (moto encodes "/" too)
    buckets = {"landing"}
    dated = s3_event("landing", "incoming/2024-05-06/a b+c.ndjson", etag_of(1))
    undated = s3_event("landing", "incoming/raw/x.ndjson", f'"{etag_of(2)}"', time="2024-07-08T23:59:59Z")
    dated["Records"][0]["s3"]["object"]["key"] = "incoming%2F2024-05-06%2Fa+b%2Bc.ndjson"
    wrapped = json.dumps({"Type": "Notification", "Message": json.dumps(undated)})

    # When they are parsed
    first = parse_notification(json.dumps(dated), buckets=buckets, landing_prefix="incoming/")
    second = parse_notification(wrapped, buckets=buckets, landing_prefix="incoming/")

    # Then keys are decoded (+ is a space, %2B a plus) and the date comes from the folder, else the event
    assert [(f.key, f.date_prefix, f.identity) for f in first.files] == [
        ("incoming/2024-05-06/a b+c.ndjson", "2024-05-06", etag_of(1))
    ]
    assert [(f.key, f.date_prefix, f.identity) for f in second.files] == [
        ("incoming/raw/x.ndjson", "2024-07-08", etag_of(2))
    ]


def test_test_events_other_event_types_and_invalid_records_are_told_apart() -> None:
    # Given a test event, a delete, a folder placeholder and records that break the rules
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "landing"})
    records = [
        s3_event("landing", "incoming/2024-01-01/ok.ndjson", etag_of(1))["Records"][0],
        s3_event("landing", "incoming/2024-01-01/gone.ndjson", etag_of(2), event="ObjectRemoved:Delete")["Records"][0],
        s3_event("landing", "incoming/2024-01-01/", etag_of(3))["Records"][0],
        s3_event("other-bucket", "incoming/2024-01-01/x.ndjson", etag_of(4))["Records"][0],
        s3_event("landing", "outside/x.ndjson", etag_of(5))["Records"][0],
        s3_event("landing", "incoming/2024-01-01/y.ndjson", "not-an-etag")["Records"][0],
    ]

    # When they are parsed
    test = parse_notification(test_event, buckets={"landing"}, landing_prefix="incoming/")
    mixed = parse_notification(json.dumps({"Records": records}), buckets={"landing"}, landing_prefix="incoming/")

    # Then the test event is recognised, one file is valid, two are ignored and three invalid — and the
    # summary names rules, never keys
    assert test.test_event and not test.files
    assert [f.key for f in mixed.files] == ["incoming/2024-01-01/ok.ndjson"]
    assert mixed.ignored == 2
    assert sum(mixed.invalid.values()) == 3
    assert "x.ndjson" not in mixed.invalid_summary()


# --- tracking ------------------------------------------------------------------------------------------


async def test_repeated_notifications_and_multipart_completions_track_a_file_once(fleet: Services) -> None:
    # Given a multipart upload (moto sends an extra ObjectCreated for its completion) and a small file,
    # whose notification is then delivered again
    s3, landing = fleet.aws.s3, fleet.settings.name_of(LANDING)
    key = f"incoming/{DATE}/big file.ndjson"
    upload = await s3.create_multipart_upload(Bucket=landing, Key=key)
    part1 = await s3.upload_part(
        Bucket=landing, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b'{"a":1}\n' * 700_000
    )
    part2 = await s3.upload_part(Bucket=landing, Key=key, UploadId=upload["UploadId"], PartNumber=2, Body=b"{}\n")
    await s3.complete_multipart_upload(
        Bucket=landing,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part1["ETag"], "PartNumber": 1}, {"ETag": part2["ETag"], "PartNumber": 2}]},
    )
    small = await s3.put_object(Bucket=landing, Key=f"incoming/{DATE}/small.ndjson", Body=b'{"b":2}\n')
    url, _ = await queue_urls(fleet, INGEST)
    await send(fleet, url, [s3_event(landing, f"incoming/{DATE}/small.ndjson", small["ETag"].strip('"'))])

    # When the ingest worker consumes every notification (test event included)
    stage = IngestStage(fleet, IngestConfig(max_wait_seconds=3600, tick_seconds=0.5))
    worker = await run_until_handled(fleet, stage, 5)

    # Then two files are tracked, once each, pending; the repeats had no effect and nothing failed
    items = await file_items(fleet)
    assert sorted(i["key"]["S"] for i in items) == [key, f"incoming/{DATE}/small.ndjson"]
    assert {i["status"]["S"] for i in items} == {"pending"}
    assert (stage.stats.tracked, stage.stats.duplicates) == (2, 2)
    assert worker.stats.dead_lettered == 0


async def test_invalid_records_are_dead_lettered_after_their_valid_neighbours_are_tracked(
    fleet: Services,
) -> None:
    # Given a notification with one good record and one from a bucket ingest must not read
    landing = fleet.settings.name_of(LANDING)
    body = s3_event(landing, f"incoming/{DATE}/good.ndjson", etag_of(1))
    body["Records"] += s3_event("someone-elses-bucket", f"incoming/{DATE}/x.ndjson", etag_of(2))["Records"]
    url, dlq = await queue_urls(fleet, INGEST)
    await send(fleet, url, [body, "not json"])

    # When ingest runs
    await run_until_handled(fleet, IngestStage(fleet, IngestConfig(max_wait_seconds=3600)), 2)

    # Then the good file is tracked, and both messages are in the DLQ with a reason naming no key
    assert [i["key"]["S"] for i in await file_items(fleet)] == [f"incoming/{DATE}/good.ndjson"]
    dead = await drain_queue(fleet, dlq, wait=0)
    reasons = sorted(m["MessageAttributes"]["fleet.error"]["StringValue"] for m in dead)
    assert len(reasons) == 2
    assert reasons[0].startswith("1 invalid S3 records: bucket not accepted (1)")
    assert "not JSON" in reasons[1]


async def test_a_claim_is_exclusive_and_a_retried_claim_still_knows_the_file_is_its_own(fleet: Services) -> None:
    # Given a tracked file
    store = IngestStage(fleet).builder.store
    landing = fleet.settings.name_of(LANDING)
    [event] = parse_notification(
        json.dumps(s3_event(landing, f"incoming/{DATE}/x.ndjson", etag_of(1))),
        buckets={landing},
        landing_prefix="incoming/",
    ).files
    assert await store.track(event)
    [pending] = await store.pending(DATE, 10)

    # When manifest M1 claims it, M1's claim is retried (its first reply lost), and M2 tries too
    first = await store.claim(DATE, pending.ref, "M1")
    retried = await store.claim(DATE, pending.ref, "M1")
    other = await store.claim(DATE, pending.ref, "M2")

    # Then the file is M1's, the retry recognises it as such, M2 is refused, and it is no longer pending
    assert (first, retried, other) == (True, True, False)
    assert await store.pending(DATE, 10) == []


# --- manifests -----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_450_files_with_duplicates_and_three_racing_workers_make_exactly_three_manifests(
    roomy: Services,
) -> None:
    # Given 450 notifications for one date, 10% of them delivered twice, in random order
    landing = roomy.settings.name_of(LANDING)
    keys = [f"incoming/{DATE}/part-{n:04d}.ndjson" for n in range(450)]
    bodies = [s3_event(landing, k, etag_of(n)) for n, k in enumerate(keys)]
    rng = random.Random(3)
    bodies += rng.sample(bodies, 45)
    rng.shuffle(bodies)
    # and three ingest workers, each with its own stage, sharing one config whose max wait is long
    config = IngestConfig(max_wait_seconds=3600, tick_seconds=0.3, lease_seconds=30)
    stages = [IngestStage(roomy, config) for _ in range(3)]
    workers = [
        await Worker.create(s, roomy, queue=INGEST, tuning=tuning(burst_idle_seconds=2), burst=True) for s in stages
    ]
    running = [asyncio.create_task(w.run()) for w in workers]

    # When the notifications arrive (the queue kept shallow), then the partial batch's max wait passes
    await feed(roomy, bodies, workers)
    await wait_until(lambda: settled(workers) >= len(bodies))
    config.max_wait_seconds = 0.5  # rather than sleeping through a real max wait
    await asyncio.wait_for(asyncio.gather(*running), 60)

    # Then exactly three manifests: 200, 200 and the 50 flushed by age, with no file in two of them
    manifests = await lake_manifests(roomy)
    assert sorted(len(m.files) for m in manifests) == [50, 200, 200]
    listed = Counter(f.key for m in manifests for f in m.files)
    assert set(listed) == set(keys)
    assert max(listed.values()) == 1
    # and one compact job per manifest, each submitted
    jobs = await compact_jobs(roomy)
    assert sorted(j["manifest_id"] for j in jobs) == sorted(m.manifest_id for m in manifests)
    for m in manifests:
        assert await manifest_state(roomy, m.manifest_id) == "SUBMITTED"
    # and the table agrees: every file claimed by the manifest that lists it, none pending
    items = await file_items(roomy)
    owner = {f.key: m.manifest_id for m in manifests for f in m.files}
    assert len(items) == 450
    assert all(i["status"]["S"] == "manifested" and i["manifest_id"]["S"] == owner[i["key"]["S"]] for i in items)
    # (the table, not the counters, is the proof: a put whose reply is lost and retried counts as a
    # duplicate though it tracked the file)
    assert sum(s.stats.tracked + s.stats.duplicates for s in stages) == len(bodies)
    assert sum(s.builder.built for s in stages) == 3


class Crash(Exception):
    """Stands in for the process dying at a checkpoint."""


def crash_at(step: str, crashed: asyncio.Future[str], nth: int = 1) -> Callable[[str, str], Awaitable[None]]:
    seen = 0

    async def checkpoint(at: str, manifest_id: str) -> None:
        nonlocal seen
        if at == step and not crashed.done():
            seen += 1
            if seen == nth:
                crashed.set_result(manifest_id)
                raise Crash(f"killed at {step} #{nth}")

    return checkpoint


async def run_until_crash(
    services: Services, config: IngestConfig, step: str, bodies: list[dict[str, Any]], nth: int = 1
) -> str:
    """Run one ingest worker until it dies at `step`; returns the manifest it was working on."""
    crashed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stage = IngestStage(services, config, checkpoint=crash_at(step, crashed, nth))
    worker = await Worker.create(stage, services, queue=INGEST, tuning=tuning(), burst=False)
    running = asyncio.create_task(worker.run())
    await feed(services, bodies, [worker])
    manifest_id = await asyncio.wait_for(crashed, 30)
    worker.stop(now=True)  # nothing more runs in the "dead" process
    await asyncio.wait_for(running, 30)
    return manifest_id


async def recover(services: Services, config: IngestConfig) -> IngestStage:
    """A fresh worker (another process, after the crash) in burst mode."""
    stage = IngestStage(services, config)
    worker = await Worker.create(stage, services, queue=INGEST, tuning=tuning(), burst=True)
    await asyncio.wait_for(worker.run(), 30)
    return stage


async def test_a_crash_between_manifest_write_and_hand_off_is_finished_by_the_sweeper(
    fleet: Services, settings: FleetSettings
) -> None:
    # Given a worker that dies right after writing a full manifest to the lake, before queueing its job
    landing = fleet.settings.name_of(LANDING)
    bodies = [s3_event(landing, f"incoming/{DATE}/f{n}.ndjson", etag_of(n)) for n in range(20)]
    config = IngestConfig(batch_size=20, max_wait_seconds=3600, tick_seconds=0.2, lease_seconds=1)
    manifest_id = await run_until_crash(fleet, config, "manifest_written", bodies)
    assert [m.manifest_id for m in await lake_manifests(fleet)] == [manifest_id]
    assert await queue_depth(fleet, COMPACT) == 0
    assert await manifest_state(fleet, manifest_id) == "SEALED"

    # When another worker runs past the dead one's lease
    stage = await recover(fleet, config)

    # Then its sweeper handed the manifest off: exactly one compact job, for that manifest, with its 20
    # files, and no new manifest was made
    jobs = await compact_jobs(fleet)
    assert [j["manifest_id"] for j in jobs] == [manifest_id]
    assert jobs[0]["manifest_key"] == f"manifests/{DATE}/{manifest_id}.json"
    assert await manifest_state(fleet, manifest_id) == "SUBMITTED"
    manifests = await lake_manifests(fleet)
    assert [(m.manifest_id, len(m.files)) for m in manifests] == [(manifest_id, 20)]
    assert stage.builder.recovered == 1
    job = await fleet.jobs.get(manifest_id)
    assert job is not None
    assert [h.get("recovered") for h in job["history"] if h["stage"] == "ingest"] == [None, True]


async def test_a_crash_in_the_middle_of_claiming_leaves_no_claimed_file_without_a_manifest(
    fleet: Services,
) -> None:
    # Given a worker that dies while claiming a batch of 150 files, at its 60th claim
    landing = fleet.settings.name_of(LANDING)
    bodies = [s3_event(landing, f"incoming/{DATE}/f{n:03d}.ndjson", etag_of(n)) for n in range(150)]
    # (a 3 s lease: on a loaded machine, a shorter one may run out before the "dead" worker has stopped)
    config = IngestConfig(batch_size=150, max_wait_seconds=3600, tick_seconds=0.2, lease_seconds=3)
    crashed_id = await run_until_crash(fleet, config, "claim", bodies, nth=60)
    assert await manifest_state(fleet, crashed_id) == "CLAIMING"
    statuses = Counter(i.get("manifest_id", {}).get("S", i["status"]["S"]) for i in await file_items(fleet))
    assert 0 < statuses[crashed_id] < 150 and statuses["pending"] == 150 - statuses[crashed_id]

    # When another worker runs past the dead one's lease
    stage = await recover(fleet, config)

    # Then its sweeper finished that manifest — claimed the candidates still pending for it, sealed and
    # handed it off — so all 150 files are in it, in no other, with one compact job
    manifests = await lake_manifests(fleet)
    assert [(m.manifest_id, len(m.files)) for m in manifests] == [(crashed_id, 150)]
    assert len({f.key for f in manifests[0].files}) == 150
    assert [j["manifest_id"] for j in await compact_jobs(fleet)] == [crashed_id]
    items = await file_items(fleet)
    assert {(i["status"]["S"], i["manifest_id"]["S"]) for i in items} == {("manifested", crashed_id)}
    assert (stage.builder.recovered, stage.builder.built) == (1, 0)


async def test_a_builder_that_stalls_past_its_lease_cannot_add_to_the_manifest_the_sweeper_finished(
    fleet: Services,
) -> None:
    # Given a worker whose builder stalls at its 60th claim of a 150-file batch (a long GC pause, a
    # network partition) — long enough for its lease to run out
    landing = fleet.settings.name_of(LANDING)
    bodies = [s3_event(landing, f"incoming/{DATE}/f{n:03d}.ndjson", etag_of(n)) for n in range(150)]
    config = IngestConfig(batch_size=150, max_wait_seconds=3600, tick_seconds=300, lease_seconds=1)
    stalled: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    resume = asyncio.Event()
    seen = 0

    async def stall(at: str, manifest_id: str) -> None:
        nonlocal seen
        if at == "claim":
            seen += 1
            if seen == 60:
                stalled.set_result(manifest_id)
                await resume.wait()

    slow = IngestStage(fleet, config, checkpoint=stall)
    slow_worker = await Worker.create(slow, fleet, queue=INGEST, tuning=tuning(), burst=False)
    running = asyncio.create_task(slow_worker.run())
    await feed(fleet, bodies, [slow_worker])
    manifest_id = await asyncio.wait_for(stalled, 30)

    # When another worker's sweeper finishes the manifest, and only then the stalled builder wakes up
    rescuer = IngestStage(fleet, config.model_copy(update={"tick_seconds": 0.2}))
    rescuer_worker = await Worker.create(rescuer, fleet, queue=INGEST, tuning=tuning(), burst=False)
    rescuing = asyncio.create_task(rescuer_worker.run())
    await wait_until(lambda: rescuer.builder.recovered == 1, timeout=30)
    rescuer_worker.stop()
    await asyncio.wait_for(rescuing, 30)
    resume.set()
    await wait_until(lambda: settled([slow_worker]) >= len(bodies))
    slow_worker.stop()
    await asyncio.wait_for(running, 30)

    # Then the woken builder's last claim and its seal changed nothing: one manifest of 150 files, one
    # compact job, the manifest handed off by the sweeper alone
    manifests = await lake_manifests(fleet)
    assert [(m.manifest_id, len(m.files)) for m in manifests] == [(manifest_id, 150)]
    assert [j["manifest_id"] for j in await compact_jobs(fleet)] == [manifest_id]
    assert await manifest_state(fleet, manifest_id) == "SUBMITTED"
    assert (rescuer.builder.recovered, slow.builder.built) == (1, 0)
