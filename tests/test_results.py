"""Job results that must come out right: failed compactions fail, a later success wins over an earlier
failure, a late event cannot overwrite a newer one, and notices carry only clean text and safe links."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from shared.stage import Services
from tests.finalizer_helpers import (
    SEED_FAILURE,
    SEED_SUCCESS,
    fast_config,
    notifications,
    run_finalizer,
    seed_event,
    subscribe_tap,
)
from tests.helpers import drain_queue, queue_urls
from tests.test_compact import DATE, ingest, lake_objects, lines, run
from workers.compact.stage import CompactStage
from workers.finalizer.final_event import send_final_event
from workers.finalizer.stage import FinalizerStage
from workers.ingest.resources import COMPACT, LANDING


def at(event: dict[str, Any], completed: str) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["timestamps"] = {"started_at": "2024-12-11T10:00:00Z", "completed_at": completed}
    return event


async def test_a_late_failure_cannot_overwrite_a_later_completion(fleet: Services) -> None:
    # Given a job completed at 12:03, and a failure event of the same job from 11:30 delivered after it
    done = seed_event(SEED_SUCCESS)
    job = done["execution_id"]
    late = at({**SEED_FAILURE, "execution_id": job}, "2024-12-11T11:30:00Z")
    tap = await subscribe_tap(fleet)
    await send_final_event(fleet, done)
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)
    await send_final_event(fleet, late)

    # When the finalizer handles the late one
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then the job stays COMPLETED and only the completion was announced
    record = await fleet.jobs.get(job)
    assert record is not None and record["status"] == "COMPLETED"
    statuses = [n["MessageAttributes"]["status"]["Value"] for n in await notifications(fleet, tap)]
    assert statuses == ["COMPLETED"]


async def test_racing_final_events_end_with_the_latest_whatever_their_order(fleet: Services) -> None:
    # Given a failure from 11:30 and a completion from 12:03 of one job, handled by two finalizers at once
    done = seed_event(SEED_SUCCESS)
    job = done["execution_id"]
    failed = at({**SEED_FAILURE, "execution_id": job}, "2024-12-11T11:30:00Z")
    first, second = FinalizerStage(fleet, config=fast_config()), FinalizerStage(fleet, config=fast_config())

    # When both run concurrently
    await asyncio.gather(
        first.finalize(first.parse(json.dumps(failed)), lease_seconds=30),
        second.finalize(second.parse(json.dumps(done)), lease_seconds=30),
    )

    # Then the later event decided the job
    record = await fleet.jobs.get(job)
    assert record is not None and record["status"] == "COMPLETED"


async def test_presigned_links_only_for_the_fleets_own_buckets(fleet: Services) -> None:
    # Given presigned links on, and an event whose transcript sits in someone else's bucket
    event = seed_event(SEED_SUCCESS)
    event["processing_results"]["transcription"]["transcript_uri"] = "s3://victim-payroll-bucket/hr/salaries.csv"
    tap = await subscribe_tap(fleet)
    await send_final_event(fleet, event)

    # When it is finalized
    await run_finalizer(FinalizerStage(fleet, config=fast_config(download_links="presigned")), fleet)

    # Then no URL that grants access was published: that link is a console page, which needs the reader's own
    (note,) = await notifications(fleet, tap)
    link = json.loads(note["Message"])["results"]["transcription"]["download"]
    assert "X-Amz-Signature" not in link and link.startswith("https://s3.console.aws.amazon.com/")


async def test_a_notification_body_carries_only_clean_text(fleet: Services) -> None:
    # Given a failure event whose error message carries NUL, CR/LF and a right-to-left override
    event = seed_event(SEED_FAILURE)
    event["error"]["error_message"] = "quota\r\nFORGED: all good\x00 \u202egnp.exe"
    tap = await subscribe_tap(fleet)
    await send_final_event(fleet, event)

    # When it is finalized
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then the body's text is one visible line, with none of those characters
    (note,) = await notifications(fleet, tap)
    body = note["Message"]
    for bad in ("\\r", "\\n", "\\u0000", "\\u202e", "\r", "\n", "\x00", "\u202e"):
        assert bad not in body, bad
    assert "quota FORGED: all good" in json.loads(body)["error"]["message"]


async def test_a_manifest_whose_only_file_is_missing_fails_and_writes_nothing(fleet: Services, tmp_path: Path) -> None:
    # Given a manifest of one file, deleted before compaction
    manifest = await ingest(fleet, tmp_path, {"only.ndjson": lines({"a": 1})})
    await fleet.aws.s3.delete_object(Bucket=fleet.settings.name_of(LANDING), Key=manifest.files[0].key)

    # When it is compacted, then finalized
    await run(CompactStage(fleet), fleet)
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then no Parquet file was written, and the job FAILED
    assert await lake_objects(fleet, f"parquet/date={DATE}/") == []
    job = await fleet.jobs.get(manifest.manifest_id)
    assert job is not None and job["status"] == "FAILED"


async def test_a_compaction_that_succeeds_after_a_failure_is_finalized(fleet: Services, tmp_path: Path) -> None:
    # Given a manifest whose file vanished before its compaction (ingest has queued the compact job)
    manifest = await ingest(fleet, tmp_path, {"late.ndjson": lines({"a": 1}, {"a": 2})})
    landing, key = fleet.settings.name_of(LANDING), manifest.files[0].key
    saved = await (await fleet.aws.s3.get_object(Bucket=landing, Key=key))["Body"].read()
    await fleet.aws.s3.delete_object(Bucket=landing, Key=key)
    await run(CompactStage(fleet), fleet)
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)
    failed = await fleet.jobs.get(manifest.manifest_id)
    assert failed is not None and failed["status"] == "FAILED"

    # When the cause is fixed (the file is back, as it was) and the dead letter is run again
    await fleet.aws.s3.put_object(Bucket=landing, Key=key, Body=saved)
    compact_url, compact_dlq = await queue_urls(fleet, COMPACT)
    (dead,) = await drain_queue(fleet, compact_dlq, wait=0)
    await fleet.aws.sqs.send_message(QueueUrl=compact_url, MessageBody=dead["Body"])
    await run(CompactStage(fleet), fleet)
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then the success reached the finalizer, and the job COMPLETED
    done = await fleet.jobs.get(manifest.manifest_id)
    assert done is not None and done["status"] == "COMPLETED", done["history"]
