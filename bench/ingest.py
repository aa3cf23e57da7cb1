"""Ingest throughput: fleet's ingest stage vs the seed's per-file flow, both with three workers.

The seed (seeds/003, with its reliability fixes) handles each file on its own: a conditional put of the
file, then a query of *all* the date's pending files, then — at 200 — a lock, a manifest record and one
conditional update per file. fleet tracks each file with one conditional put, checks a date with one
COUNT query per burst of arrivals (not per file), and claims a batch with one conditional update per
file plus a handful of writes per manifest (see workers/ingest/manifests.py).

Both run as three workers in one process against one embedded moto server (a separate process), on
fresh tables, fed the same notifications (10% delivered twice) at a pace that keeps the queue depth at
or below `--depth` (moto's ReceiveMessage costs time linear in depth). Rate = distinct files through
ingest per second, from the first notification sent until every notification is handled and the count
of pending files stops changing (the last manifest handed off — or, for the seed's flow, which nothing
re-checks once arrivals stop, a full batch left behind: that is reported, not hidden). DynamoDB calls
are counted with a botocore event hook on each variant's client; the seed's per-file figure covers only
the work it did.

    python bench/ingest.py [--files 400] [--depth 100]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.exceptions import ClientError

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.emulator import EmbeddedAws
from shared.errors import is_conditional_failure
from shared.logs import configure_logging
from shared.registry import discover
from shared.runtime import Worker
from shared.settings import FleetSettings, WorkerTuning, load_settings
from shared.stage import Context, Services
from workers.ingest.config import IngestConfig
from workers.ingest.events import Notification, parse_notification
from workers.ingest.layout import TODO_PENDING, file_item_key, manifest_key
from workers.ingest.resources import COMPACT, FILES, INGEST, LAKE, LANDING
from workers.ingest.stage import IngestStage

DATE = "2024-06-01"
BATCH = 200
WORKERS = 3


class SeedStyleStage:
    """The Lambda-era flow, per file, with the seed's fixes: an idempotent put (fix 1), the job started
    before the manifest record (fix 2), conditional per-file claims instead of trusting the lock (13)."""

    name = "ingest"
    queue = "ingest"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.table = services.settings.name_of(FILES)
        self.ddb = services.aws.dynamodb
        self.buckets = frozenset([services.settings.name_of(LANDING)])
        self.manifests = 0
        self.compact_url = ""

    def parse(self, body: str) -> Notification:
        return parse_notification(body, buckets=self.buckets, landing_prefix="incoming/")

    async def handle(self, message: Notification, ctx: Context) -> None:
        for f in message.files:
            now = time.time()
            item = {
                "date_prefix": {"S": f.date_prefix},
                "file_key": {"S": file_item_key(f.bucket, f.key, f.identity)},
                "bucket": {"S": f.bucket},
                "key": {"S": f.key},
                "size": {"N": str(f.size)},
                "etag": {"S": f.identity},
                "status": {"S": "pending"},
                "tracked_at": {"S": f"{now:.6f}"},
                "todo": {"S": TODO_PENDING},
                "todo_order": {"S": f"{f.date_prefix}#{now:.6f}"},
            }
            try:
                await self.ddb.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(file_key)"
                )
            except ClientError as exc:
                if is_conditional_failure(exc):
                    continue  # already tracked (SQS retry)
                raise
            pending = await self._pending(f.date_prefix)
            if len(pending) >= BATCH:
                await self._create_manifest(f.date_prefix, pending[:BATCH])

    async def _pending(self, date_prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            resp = await self.ddb.query(
                TableName=self.table,
                IndexName="todo",
                KeyConditionExpression="#t = :t AND begins_with(todo_order, :d)",
                ExpressionAttributeNames={"#t": "todo"},
                ExpressionAttributeValues={":t": {"S": TODO_PENDING}, ":d": {"S": f"{date_prefix}#"}},
                **kwargs,
            )
            items += resp.get("Items", [])
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def _create_manifest(self, date_prefix: str, files: list[dict[str, Any]]) -> None:
        lock = {"date_prefix": {"S": date_prefix}, "file_key": {"S": "lock"}}
        now = time.time()
        try:
            await self.ddb.put_item(
                TableName=self.table,
                Item={**lock, "expires": {"N": str(now + 300)}},
                ConditionExpression="attribute_not_exists(file_key) OR expires < :now",
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return  # another invocation holds the lock
            raise
        try:
            manifest_id = str(uuid.uuid4())
            key = manifest_key(date_prefix, manifest_id)
            entries = [
                {"bucket": i["bucket"]["S"], "key": i["key"]["S"], "size": int(i["size"]["N"]), "etag": i["etag"]["S"]}
                for i in files
            ]
            s3, sqs = self.services.aws.s3, self.services.aws.sqs
            body = {"manifest_id": manifest_id, "date_prefix": date_prefix, "files": entries}
            await s3.put_object(Bucket=self.services.settings.name_of(LAKE), Key=key, Body=json.dumps(body).encode())
            if not self.compact_url:
                name = self.services.settings.name_of(COMPACT)
                self.compact_url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
            await sqs.send_message(
                QueueUrl=self.compact_url,
                MessageBody=json.dumps({"manifest_id": manifest_id, "date_prefix": date_prefix, "manifest_key": key}),
            )
            await self.ddb.put_item(
                TableName=self.table,
                Item={
                    "date_prefix": {"S": date_prefix},
                    "file_key": {"S": f"m#{manifest_id}"},
                    "state": {"S": "SUBMITTED"},
                    "file_count": {"N": str(len(files))},
                },
            )
            for i in files:
                try:
                    await self.ddb.update_item(
                        TableName=self.table,
                        Key={"date_prefix": i["date_prefix"], "file_key": i["file_key"]},
                        UpdateExpression="SET #s = :m, manifest_id = :id REMOVE #t, todo_order",
                        ConditionExpression="#s = :p",
                        ExpressionAttributeNames={"#s": "status", "#t": "todo"},
                        ExpressionAttributeValues={
                            ":m": {"S": "manifested"},
                            ":p": {"S": "pending"},
                            ":id": {"S": manifest_id},
                        },
                    )
                except ClientError as exc:
                    if not is_conditional_failure(exc):
                        raise
            self.manifests += 1
        finally:
            await self.ddb.delete_item(TableName=self.table, Key=lock)


async def until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)


class CallCounter:
    """Counts DynamoDB API calls made through one client, by operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1


def notifications(bucket: str, files: int, rng: random.Random) -> list[str]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    bodies = []
    for n in range(files):
        key = quote_plus(f"incoming/{DATE}/part-{n:05d}.ndjson")
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "eventTime": now,
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 3_500_000, "eTag": f"{n:032x}"}},
        }
        bodies.append(json.dumps({"Records": [record]}))
    bodies += rng.sample(bodies, files // 10)
    rng.shuffle(bodies)
    return bodies


async def pending_left(services: Services) -> int:
    resp = await services.aws.dynamodb.query(
        TableName=services.settings.name_of(FILES),
        IndexName="todo",
        KeyConditionExpression="#t = :t",
        ExpressionAttributeNames={"#t": "todo"},
        ExpressionAttributeValues={":t": {"S": TODO_PENDING}},
        Select="COUNT",
    )
    return int(resp.get("Count", 0))


async def compact_jobs(services: Services) -> int:
    url = (await services.aws.sqs.get_queue_url(QueueName=services.settings.name_of(COMPACT)))["QueueUrl"]
    attrs = await services.aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


async def run_variant(endpoint: str, variant: str, files: int, depth: int) -> dict[str, Any]:
    settings: FleetSettings = load_settings(
        endpoint_url=endpoint, prefix=f"b{uuid.uuid4().hex[:6]}-", metrics_mode="off", health_dir="/tmp/fleet-bench"
    )
    async with open_services(settings, pool_size=120) as services, open_services(settings) as observer:
        await Bootstrapper(observer.aws, discover()).run()
        counter = CallCounter()
        services.aws.dynamodb.meta.events.register("before-call.dynamodb", counter)
        config = IngestConfig(max_wait_seconds=3600)  # batches of 200 only: no flush by age here
        stages: list[Any] = [
            IngestStage(services, config) if variant == "fleet" else SeedStyleStage(services) for _ in range(WORKERS)
        ]
        tuning = WorkerTuning(concurrency=20, wait_time_seconds=1, visibility_timeout=60)
        workers = [await Worker.create(s, services, queue=INGEST, tuning=tuning) for s in stages]
        url = (await observer.aws.sqs.get_queue_url(QueueName=settings.name_of(INGEST)))["QueueUrl"]
        bodies = notifications(settings.name_of(LANDING), files, random.Random(11))

        started = time.perf_counter()
        running = [asyncio.create_task(w.run()) for w in workers]

        def settled() -> int:
            return sum(w.stats.succeeded + w.stats.dead_lettered for w in workers)

        for start in range(0, len(bodies), 10):
            await until(lambda sent=start: sent - settled() <= depth)  # type: ignore[misc]
            entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
            await observer.aws.sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        await until(lambda: settled() >= len(bodies))
        # The last batch may still be in a builder's hands: done when the count of pending files stops
        # changing (the seed's flow can leave a full batch behind for good: no arrival re-checks it).
        done_at, last, quiet_since = time.perf_counter(), -1, time.perf_counter()
        while time.perf_counter() - quiet_since < 1.0:
            left = await pending_left(observer)
            if left != last:
                done_at, last, quiet_since = time.perf_counter(), left, time.perf_counter()
            if left == 0:
                break
            await asyncio.sleep(0.05)
        elapsed = done_at - started
        for w in workers:
            w.stop()
        await asyncio.gather(*running)
        left = await pending_left(observer)
        jobs = await compact_jobs(observer)
    calls = sum(counter.calls.values())
    manifested = files - left
    tracked = files  # every distinct file was tracked once (duplicates had no effect)
    return {
        "variant": variant,
        "files": files,
        "notifications": len(bodies),
        "manifests": jobs,
        "files_manifested": manifested,
        "seconds": elapsed,
        "files_per_s": tracked / elapsed,
        "ddb_calls": calls,
        "ddb_calls_per_file": calls / files,
        "ddb_by_operation": dict(counter.calls.most_common()),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("WARNING", "json", io.StringIO())  # logs cost the same in both; keep them off screen
    with EmbeddedAws(mode="process") as emulator:
        await run_variant(emulator.url, "fleet", BATCH, args.depth)  # warm-up: imports, connections
        fleet = await run_variant(emulator.url, "fleet", args.files, args.depth)
        seed = await run_variant(emulator.url, "seed", args.files, args.depth)
    return {"fleet": fleet, "seed": seed}


def report(results: dict[str, Any]) -> dict[str, Any]:
    print(
        f"{'variant':<8}{'files':>7}{'notifs':>8}{'manifests':>10}{'manifested':>11}{'seconds':>9}"
        f"{'files/s':>9}{'ddb calls':>11}{'calls/file':>11}"
    )
    for r in results.values():
        print(
            f"{r['variant']:<8}{r['files']:>7}{r['notifications']:>8}{r['manifests']:>10}{r['files_manifested']:>11}"
            f"{r['seconds']:>9.2f}{r['files_per_s']:>9.1f}{r['ddb_calls']:>11}{r['ddb_calls_per_file']:>11.2f}"
        )
    for r in results.values():
        ops = ", ".join(f"{op} {n}" for op, n in r["ddb_by_operation"].items())
        print(f"  {r['variant']}: {ops}")
    fleet, seed = results["fleet"], results["seed"]
    speedup = fleet["files_per_s"] / seed["files_per_s"]
    calls_ratio = seed["ddb_calls_per_file"] / fleet["ddb_calls_per_file"]
    print(f"fleet / seed: {speedup:.1f}x files/s (target >= 5x), {calls_ratio:.1f}x fewer DynamoDB calls per file")
    return {
        "files": fleet["files"],
        "workers": WORKERS,
        "fleet_files_per_s": round(fleet["files_per_s"], 1),
        "seed_files_per_s": round(seed["files_per_s"], 1),
        "speedup": round(speedup, 2),
        "fleet_ddb_calls_per_file": round(fleet["ddb_calls_per_file"], 3),
        "seed_ddb_calls_per_file": round(seed["ddb_calls_per_file"], 3),
        "ddb_calls_ratio": round(calls_ratio, 2),
        "fleet_manifests": fleet["manifests"],
        "seed_manifests": seed["manifests"],
        "fleet_files_left_pending": fleet["files"] - fleet["files_manifested"],
        "seed_files_left_pending": seed["files"] - seed["files_manifested"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400, help="distinct files per variant (a multiple of 200)")
    parser.add_argument("--depth", type=int, default=100)
    print(json.dumps(report(asyncio.run(main(parser.parse_args())))))
