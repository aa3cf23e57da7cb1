"""The compact worker over the real emulator: NDJSON files through ingest into one Parquet per manifest."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.runtime import Worker
from shared.settings import WorkerTuning
from shared.stage import Services
from tests.helpers import drain_queue, fast_tuning, queue_urls, send
from tests.test_process import run_fleet
from workers.compact.config import CompactConfig
from workers.compact.stage import CompactStage
from workers.echo import ECHO
from workers.finalizer.resources import FINALIZE
from workers.ingest.config import IngestConfig
from workers.ingest.layout import Manifest
from workers.ingest.resources import COMPACT, FILES, INGEST, LAKE, LANDING
from workers.ingest.stage import IngestStage
from workers.ingest.submit import upload_files

DATE = "2024-04-02"


def tuning(**overrides: Any) -> WorkerTuning:
    return fast_tuning(**{"concurrency": 4, **overrides})


async def run(stage: Any, services: Services) -> Worker:
    queue = INGEST if isinstance(stage, IngestStage) else COMPACT
    worker = await Worker.create(stage, services, queue=queue, tuning=tuning(), burst=True)
    await asyncio.wait_for(worker.run(), 60)
    return worker


async def ingest(services: Services, tmp_path: Path, files: dict[str, bytes]) -> Manifest:
    """Upload `files` as one submission and run ingest until their manifest is handed off."""
    paths = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        paths.append(path)
    await upload_files(services, paths, DATE)
    await run(IngestStage(services, IngestConfig(max_wait_seconds=0.2, tick_seconds=0.1)), services)
    manifests = await lake_objects(services, f"manifests/{DATE}/")
    assert len(manifests) == 1
    return Manifest.model_validate(json.loads(manifests[0][1]))


async def lake_objects(services: Services, prefix: str) -> list[tuple[str, bytes]]:
    s3, lake = services.aws.s3, services.settings.name_of(LAKE)
    listed = await s3.list_objects_v2(Bucket=lake, Prefix=prefix)
    out = []
    for obj in listed.get("Contents", []):
        body = await (await s3.get_object(Bucket=lake, Key=obj["Key"]))["Body"].read()
        out.append((obj["Key"], body))
    return out


async def parquet(services: Services) -> list[pa.Table]:
    return [pq.read_table(io.BytesIO(body)) for _, body in await lake_objects(services, f"parquet/date={DATE}/")]


async def quarantine(services: Services, manifest_id: str) -> list[dict[str, Any]]:
    objects = await lake_objects(services, f"quarantine/{manifest_id}")
    return [json.loads(line) for _, body in objects for line in body.splitlines()]


async def item(services: Services, file_key: str) -> dict[str, Any]:
    resp = await services.aws.dynamodb.get_item(
        TableName=services.settings.name_of(FILES),
        Key={"date_prefix": {"S": DATE}, "file_key": {"S": file_key}},
        ConsistentRead=True,
    )
    return dict(resp["Item"])


def lines(*rows: Any) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


MIXED = {
    "a.ndjson": lines(
        {"id": 1, "name": "ana", "score": 1},
        "not json",
        {"id": 2, "name": "bo", "score": 3},
        "",
        "[1, 2]",
    ),
    "b.ndjson": lines(
        {"id": "three", "score": 2.5, "tags": ["x", "y"], "meta": {"k": {"deep": True}}},
        '{"id": 4, "truncated": ',
        "42",
        {"id": 5, "ok": True},
    ),
    # CRLF line ends, non-ASCII text, no newline after the last line
    "c.ndjson": b'{"id": 6, "name": "\xc3\xa9l\xc3\xa9a"}\r\n{"id": 7, "ok": false}',
}


async def test_files_with_mixed_schemas_and_bad_lines_become_one_parquet_and_a_quarantine(
    fleet: Services, tmp_path: Path
) -> None:
    # Given three NDJSON files that disagree on their fields and hold four lines that are not objects,
    # ingested into one manifest
    manifest = await ingest(fleet, tmp_path, MIXED)

    # When the compact worker runs
    worker = await run(CompactStage(fleet), fleet)

    # Then one Parquet file holds the 6 records, with the unified schema: mixed int/str → string,
    # int/float → double, nested values → JSON strings, plus the lineage columns
    assert worker.stats.succeeded == 1
    [table] = await parquet(fleet)
    assert table.num_rows == 6
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "id": "string",
        "name": "string",
        "score": "double",
        "tags": "string",
        "meta": "string",
        "ok": "bool",
        "_fleet_file": "string",
        "_fleet_line": "int64",
    }
    rows = sorted(table.to_pylist(), key=lambda r: (r["_fleet_file"], r["_fleet_line"]))
    assert [r["id"] for r in rows] == ["1", "2", "three", "5", "6", "7"]
    assert rows[2]["tags"] == '["x","y"]' and json.loads(rows[2]["meta"]) == {"k": {"deep": True}}
    assert rows[4]["name"] == "éléa" and rows[5]["ok"] is False
    assert [r["_fleet_line"] for r in rows] == [1, 3, 1, 4, 1, 2]
    # and every bad line is in quarantine with its file, line number and reason
    bad = await quarantine(fleet, manifest.manifest_id)
    assert [(b["file"].rsplit("/", 1)[-1], b["line"]) for b in bad] == [
        ("a.ndjson", 2),
        ("a.ndjson", 5),
        ("b.ndjson", 2),
        ("b.ndjson", 3),
    ]
    assert [b["reason"].split(":")[0] for b in bad] == [
        "not JSON",
        "JSON list is not an object",
        "not JSON",
        "JSON int is not an object",
    ]
    # and the manifest and its files are marked compacted with their row counts
    by_name = {f.key.rsplit("/", 1)[-1]: f for f in manifest.files}
    counts = {}
    for name, f in by_name.items():
        record = await item(fleet, f"f#{f.bucket}/{f.key}#{f.etag}")
        counts[name] = (record["status"]["S"], int(record["rows"]["N"]))
    assert counts == {"a.ndjson": ("compacted", 2), "b.ndjson": ("compacted", 2), "c.ndjson": ("compacted", 2)}
    record = await item(fleet, f"m#{manifest.manifest_id}")
    assert (record["state"]["S"], record["rows"]["N"], record["quarantined_lines"]["N"]) == ("COMPACTED", "6", "4")


async def test_a_compacted_manifest_is_handed_to_the_finalizer_once_and_its_status_is_visible(
    fleet: Services, tmp_path: Path
) -> None:
    # Given a manifest compacted once
    manifest = await ingest(fleet, tmp_path, MIXED)
    await run(CompactStage(fleet), fleet)

    # When its compact job is delivered again (a duplicate hand-off, or an operator's re-run)
    url, _ = await queue_urls(fleet, COMPACT)
    job = {
        "manifest_id": manifest.manifest_id,
        "date_prefix": DATE,
        "manifest_key": f"manifests/{DATE}/{manifest.manifest_id}.json",
    }
    await fleet.aws.sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(job),
        MessageAttributes={"fleet.job-id": {"DataType": "String", "StringValue": manifest.manifest_id}},
    )
    await run(CompactStage(fleet), fleet)

    # Then the output was rewritten in place — still one Parquet object, same rows, same quarantine
    tables = await parquet(fleet)
    assert [t.num_rows for t in tables] == [6]
    assert len(await quarantine(fleet, manifest.manifest_id)) == 4
    # and the finalizer got exactly one event, shaped like the seed's, keyed by this pipeline's stages
    finalize_url = (await fleet.aws.sqs.get_queue_url(QueueName=fleet.settings.name_of(FINALIZE)))["QueueUrl"]
    events = [json.loads(m["Body"]) for m in await drain_queue(fleet, finalize_url, wait=0)]
    assert len(events) == 1
    event = events[0]
    assert event["execution_id"] == manifest.manifest_id and event["status"] == "COMPLETED"
    assert set(event["processing_results"]) == {"ingest", "compact"}
    assert event["processing_results"]["compact"]["status"] == "PARTIAL"
    assert event["processing_results"]["compact"]["rows"] == 6
    # and `fleet status <manifest_id>` has the whole story
    status = await fleet.jobs.get(manifest.manifest_id)
    assert status is not None
    steps = [(h["stage"], h["status"]) for h in status["history"]]
    assert ("ingest", "MANIFESTED") in steps and steps.count(("compact", "COMPACTED")) == 2


async def test_large_files_stream_in_chunks_while_the_event_loop_stays_responsive(
    fleet: Services, tmp_path: Path
) -> None:
    # Given a 6 MB file whose lines straddle 64 KiB read chunks, and one line over the size limit
    rows = [{"n": i, "text": "x" * (i % 300), "v": i / 7} for i in range(30_000)]
    big = lines(*rows[:15_000], {"huge": "y" * 5000}, *rows[15_000:])
    manifest = await ingest(fleet, tmp_path, {"big.ndjson": big})
    config = CompactConfig(chunk_bytes=64 * 1024, parse_bytes=64 * 1024, batch_rows=1000, max_line_bytes=4096)

    # When it is compacted while a probe measures how late the event loop wakes it
    lateness: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lateness.append(time.monotonic() - started - 0.01)

    probing = asyncio.create_task(probe())
    await run(CompactStage(fleet, config), fleet)
    done.set()
    await probing

    # Then every record arrived, in order, in several row groups; the long line is quarantined,
    # truncated; and the loop never stalled for long (the parsing ran in threads)
    [table] = await parquet(fleet)
    assert table.num_rows == 30_000
    assert table.column("n").to_pylist() == list(range(30_000))
    assert pq.ParquetFile(io.BytesIO((await lake_objects(fleet, "parquet/"))[0][1])).num_row_groups > 1
    [bad] = await quarantine(fleet, manifest.manifest_id)
    assert bad["line"] == 15_001 and bad["reason"] == "line longer than 4096 bytes" and bad["raw_truncated"]
    assert max(lateness) < 0.5, f"event loop stalled {max(lateness):.2f}s"


async def test_a_source_changed_or_deleted_after_its_notification_is_reported_not_read(
    fleet: Services, tmp_path: Path
) -> None:
    # Given a manifest of three files, one then overwritten with new content and one deleted
    manifest = await ingest(
        fleet, tmp_path, {"keep.ndjson": lines({"a": 1}), "changed.ndjson": lines({"a": 2}), "gone.ndjson": b"{}\n"}
    )
    s3, landing = fleet.aws.s3, fleet.settings.name_of(LANDING)
    keys = {f.key.rsplit("/", 1)[-1]: f.key for f in manifest.files}
    await s3.put_object(Bucket=landing, Key=keys["changed.ndjson"], Body=lines({"a": 99}, {"a": 100}))
    await s3.delete_object(Bucket=landing, Key=keys["gone.ndjson"])

    # When the manifest is compacted
    await run(CompactStage(fleet), fleet)

    # Then only the unchanged file's rows are in the Parquet file — the new version is a new file for a
    # later manifest — and the two others are reported in quarantine
    [table] = await parquet(fleet)
    assert table.column("a").to_pylist() == [1]
    bad = {
        b["file"].rsplit("/", 1)[-1]: (b["line"], b["reason"]) for b in await quarantine(fleet, manifest.manifest_id)
    }
    assert bad == {
        "changed.ndjson": (0, "object changed since it was announced (eTag differs)"),
        "gone.ndjson": (0, "object not found"),
    }


async def test_a_job_naming_another_key_or_a_missing_manifest_is_dead_lettered(fleet: Services) -> None:
    # Given a job whose manifest key is not the one its id names, and a manifest job (as ingest records it)
    # whose manifest was never written
    mid = str(uuid.uuid4())
    url, dlq = await queue_urls(fleet, COMPACT)
    await fleet.jobs.create(mid, "manifest", queue=fleet.settings.name_of(COMPACT))
    await send(fleet, url, [{"manifest_id": mid, "date_prefix": DATE, "manifest_key": "incoming/secret.json"}])
    await send(fleet, url, [{"manifest_id": mid, "date_prefix": DATE, "manifest_key": f"manifests/{DATE}/{mid}.json"}])

    # When the compact worker runs
    await run(CompactStage(fleet), fleet)

    # Then both are dead-lettered at once with their reasons, and the job's failure reached the finalizer
    dead = await drain_queue(fleet, dlq, wait=0)
    codes = sorted(m["MessageAttributes"]["fleet.error-code"]["StringValue"] for m in dead)
    assert codes == ["INVALID", "MANIFEST_NOT_FOUND"]
    finalize_url = (await fleet.aws.sqs.get_queue_url(QueueName=fleet.settings.name_of(FINALIZE)))["QueueUrl"]
    [event] = [json.loads(m["Body"]) for m in await drain_queue(fleet, finalize_url, wait=0)]
    assert (event["execution_id"], event["status"]) == (mid, "FAILED")
    assert event["error"]["error_code"] == "MANIFEST_NOT_FOUND"
    # And compact is the stage reported: its failure fails the job (the finalizer's rule makes it FAILED)
    assert event["processing_results"] == {"compact": {"status": "FAILED"}}


async def test_a_forged_compact_message_touches_no_job(fleet: Services) -> None:
    # Given an echo job, and a raw compact message for a manifest nobody built, claiming the echo job's id
    echo_job = str(uuid.uuid4())
    await fleet.jobs.create(echo_job, "echo", queue=fleet.settings.name_of(ECHO), terminal="echo")
    url, dlq = await queue_urls(fleet, COMPACT)
    forged = str(uuid.uuid4())
    await fleet.aws.sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(
            {"manifest_id": forged, "date_prefix": DATE, "manifest_key": f"manifests/{DATE}/{forged}.json"}
        ),
        MessageAttributes={"fleet.job-id": {"DataType": "String", "StringValue": echo_job}},
    )

    # When the compact worker runs
    await run(CompactStage(fleet), fleet)

    # Then the message is dead-lettered, nothing goes to the finalizer, and the echo job is untouched
    (dead,) = await drain_queue(fleet, dlq, wait=0)
    assert dead["MessageAttributes"]["fleet.error-code"]["StringValue"] == "MANIFEST_NOT_FOUND"
    finalize_url = (await fleet.aws.sqs.get_queue_url(QueueName=fleet.settings.name_of(FINALIZE)))["QueueUrl"]
    assert await drain_queue(fleet, finalize_url, wait=0) == []
    job = await fleet.jobs.get(echo_job)
    assert job is not None and [h["stage"] for h in job["history"]] == ["submit"] and job["status"] == "SUBMITTED"
    assert await fleet.jobs.get(forged) is None


async def test_fleet_submit_ingest_then_workers_then_status_from_the_command_line(
    fleet: Services, tmp_path: Path
) -> None:
    # Given two NDJSON files submitted the way a user does
    settings = fleet.settings
    (tmp_path / "one.ndjson").write_bytes(lines({"a": 1}, {"a": 2}))
    (tmp_path / "two words.ndjson").write_bytes(lines({"b": "x"}, "oops"))

    async def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return await run_fleet(settings, *args, **env)

    submitted = await cli(
        "submit", "ingest", str(tmp_path / "one.ndjson"), str(tmp_path / "two words.ndjson"), "--date", DATE
    )
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()

    # When the ingest worker (a short max wait set through its FLEET_INGEST_* settings) and then the
    # compact worker run in burst mode
    fast = {"FLEET_DEFAULTS__WAIT_TIME_SECONDS": "1", "FLEET_DEFAULTS__BURST_IDLE_SECONDS": "0.5"}
    ingested = await cli(
        "worker", "ingest", "--burst", FLEET_INGEST_MAX_WAIT_SECONDS="0.2", FLEET_INGEST_TICK_SECONDS="0.1", **fast
    )
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    compacted = await cli("worker", "compact", "--burst", **fast)
    assert compacted.returncode == 0, compacted.stderr[-2000:]

    # Then the upload job and the manifest's job both tell their story through `fleet status`
    upload = await cli("status", job_id)
    assert upload.returncode == 0 and "UPLOADED" in upload.stdout
    [(_, raw)] = await lake_objects(fleet, f"manifests/{DATE}/")
    manifest = Manifest.model_validate(json.loads(raw))
    assert sorted(f.key.rsplit("/", 1)[-1] for f in manifest.files) == ["one.ndjson", "two_words.ndjson"]
    assert all(f.key.startswith(f"incoming/{DATE}/{job_id}/") for f in manifest.files)
    status = await cli("status", manifest.manifest_id)
    for word in ("MANIFESTED", "RUNNING", "COMPACTED", "SUCCEEDED"):
        assert word in status.stdout
    [table] = await parquet(fleet)
    assert table.num_rows == 3
    # And the upload is linked to the manifest its files went to; once the finalizer closed the manifest's
    # job, the upload is finished too (PARTIAL_SUCCESS: a line was quarantined)
    assert manifest.manifest_id in upload.stdout and "RUNNING" in upload.stdout.splitlines()[0]
    finalized = await cli("worker", "finalizer", "--burst", **fast)
    assert finalized.returncode == 0, finalized.stderr[-2000:]
    done = await cli("status", job_id)
    assert "status=PARTIAL_SUCCESS" in done.stdout.splitlines()[0], done.stdout
