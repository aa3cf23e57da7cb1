"""The finalizer end to end: real runtime, real emulator, notifications read from a subscribed queue,
metrics read back from CloudWatch."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.stage import Services
from tests.finalizer_helpers import (
    FIVE_METRICS,
    SEED_FAILURE,
    SEED_SUCCESS,
    attribute,
    fast_config,
    metric_points,
    metric_sums,
    notifications,
    queue_url,
    run_finalizer,
    seed_event,
    subscribe_tap,
    tuning,
    with_cloudwatch,
)
from workers.finalizer.final_event import final_event, send_final_event
from workers.finalizer.notification import dedup_id
from workers.finalizer.resources import FINALIZE, MEDIA
from workers.finalizer.stage import FinalizerStage

CONSOLE = "https://s3.console.aws.amazon.com/s3/object"


async def dead_letters(services: Services) -> list[dict[str, Any]]:
    url = await queue_url(services, services.settings.name_of(FINALIZE) + "-dlq")
    resp = await services.aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
    )
    return [dict(m) for m in resp.get("Messages", [])]


async def test_success_event_completes_the_job_notifies_and_records_the_five_metrics(fleet: Services) -> None:
    # Given a submitted job whose transcribe stage is already recorded, its video in S3 (1.5 MiB),
    # a queue subscribed to the notifications topic, and metrics going to CloudWatch
    services = with_cloudwatch(fleet)
    media = services.settings.name_of(MEDIA)
    event = seed_event(SEED_SUCCESS, bucket=media)
    job_id = event["execution_id"]
    await services.aws.s3.put_object(Bucket=media, Key="videos/meeting.mp4", Body=b"\0" * 1_572_864)
    await services.jobs.create(job_id, "video", {"video_key": "videos/meeting.mp4"})
    await services.jobs.record_stage(job_id, "transcribe", "SUCCEEDED", job_name="tj-1")
    tap = await subscribe_tap(services)

    # When the pipeline's final event goes through the finalizer worker
    await send_final_event(services, event)
    worker = await run_finalizer(FinalizerStage(services, config=fast_config()), services)

    # Then the message was handled once and deleted
    assert (worker.stats.succeeded, worker.stats.retried, worker.stats.dead_lettered) == (1, 0, 0)
    # And the job carries its final state, next to the other stages' data
    job = await services.jobs.get(job_id)
    assert job is not None
    assert job["status"] == "COMPLETED"
    assert job["cost_estimate_usd"] == Decimal("3.19")
    assert job["total_duration_seconds"] == 7380
    assert job["completion_time"] == "2024-12-11T12:03:00Z"
    assert job["processing_metrics"]["tokens_used"] == 45000
    assert job["processing_metrics"]["transcription_duration_seconds"] == 7200
    assert job["progress"]["transcribe"]["job_name"] == "tj-1"
    # (the runtime's own record of the finalizer run lands in `progress`, never over `stages.finalizer`)
    assert job["stages"]["finalizer"]["status"] == "completed"
    assert job["progress"]["finalizer"]["status"] == "SUCCEEDED"
    assert job["detail"] == {"video_key": "videos/meeting.mp4"}
    finalized = [h for h in job["history"] if h["status"] == "FINALIZED"]
    assert [h["stage"] for h in job["history"]][:2] == ["submit", "transcribe"]
    assert len(finalized) == 1
    assert finalized[0]["final_status"] == "COMPLETED" and finalized[0]["retry_attempts"] == 1
    # And one notification in the seed's success shape, with console download links
    (note,) = await notifications(services, tap)
    assert note["Subject"] == "✅ Video Processing Completed - meeting.mp4"
    assert json.loads(note["Message"]) == {
        "status": "COMPLETED",
        "execution_id": job_id,
        "video": {"filename": "meeting.mp4", "duration": "2h 0m", "size_mb": 1.5},
        "processing": {
            "started": "2024-12-11 10:00 UTC",
            "completed": "2024-12-11 12:03 UTC",
            "duration": "2h 3m",
            "cost_usd": 3.19,
        },
        "results": {
            "transcription": {
                "speakers": 3,
                "download": f"{CONSOLE}/transcripts?region=us-east-1&prefix=550e8400/transcript.json",
            },
            "documents": {
                "types": ["Training", "Troubleshooting"],
                "size_mb": 2.34,
                "download": f"{CONSOLE}/output?region=us-east-1&prefix=550e8400/documents.zip",
            },
        },
    }
    assert note["MessageAttributes"] == {
        "execution_id": {"Type": "String", "Value": job_id},
        "status": {"Type": "String", "Value": "COMPLETED"},
        "cost_usd": {"Type": "Number", "Value": "3.19"},
        "fleet.dedup-id": {"Type": "String", "Value": dedup_id(job_id, "COMPLETED")},
    }
    # And the five metrics, each with its Environment and Status dimensions
    assert await metric_sums(services, "COMPLETED") == {
        "ProcessingDuration": 7380,
        "ProcessingSuccess": 1,
        "ProcessingFailure": 0,
        "TokensProcessed": 45000,
        "ProcessingCost": 3.19,
    }
    units = {name: (await metric_points(services, name, "COMPLETED"))[0]["Unit"] for name in FIVE_METRICS}
    assert units == {
        "ProcessingDuration": "Seconds",
        "ProcessingSuccess": "Count",
        "ProcessingFailure": "Count",
        "TokensProcessed": "Count",
        "ProcessingCost": "None",
    }
    assert await dead_letters(services) == []


async def test_the_seeds_failure_event_is_a_partial_success_with_what_is_left_to_download(
    fleet: Services,
) -> None:
    # Given the seed's failure event (transcription done, the LLM hit its quota), its transcript kept,
    # and a job whose submit recorded the video (the event itself does not repeat it)
    services = with_cloudwatch(fleet)
    event = seed_event(SEED_FAILURE)
    event["processing_results"]["transcription"]["transcript_uri"] = "s3://transcripts/t1/transcript.json"
    await services.jobs.create(event["execution_id"], "video", {"video_key": "videos/meeting.mp4"})
    tap = await subscribe_tap(services)

    # When it is finalized
    await send_final_event(services, event)
    await run_finalizer(FinalizerStage(services, config=fast_config()), services)

    # Then by the seed's rules the job is a partial success
    job = await services.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "PARTIAL_SUCCESS"
    assert job["completion_time"] == "2024-12-11T11:30:00Z"  # the error's time: the event has no timestamps
    assert job["total_duration_seconds"] is None  # unknown start: not a made-up 0
    # And the notification is the seed's failure shape, naming the job and what can still be downloaded
    (note,) = await notifications(services, tap)
    assert note["Subject"] == "⚠️ Video Processing Partially Completed - meeting.mp4"
    assert json.loads(note["Message"]) == {
        "status": "PARTIAL_SUCCESS",
        "execution_id": event["execution_id"],
        "video": {"filename": "meeting.mp4"},
        "processing": {"completed": "2024-12-11 11:30 UTC", "cost_usd": 0},
        "error": {"stage": "llm_processing", "code": "BedrockQuotaExceeded", "message": "Rate limit exceeded"},
        "partial_results": {
            "transcription": "Available",
            "download": f"{CONSOLE}/transcripts?region=us-east-1&prefix=t1/transcript.json",
        },
        "actions": ["Check AWS Bedrock quotas", "Review CloudWatch logs", "Contact support"],
    }
    assert note["MessageAttributes"]["status"]["Value"] == "PARTIAL_SUCCESS"
    # And neither success nor failure is counted; no duration is recorded without a start time
    assert await metric_sums(services, "PARTIAL_SUCCESS") == {
        "ProcessingSuccess": 0,
        "ProcessingFailure": 0,
        "TokensProcessed": 0,
        "ProcessingCost": 0,
    }


async def test_a_failed_transcription_fails_the_job(fleet: Services) -> None:
    # Given a pipeline whose transcription failed, reporting through shared.final_event
    services = with_cloudwatch(fleet)
    event = final_event(
        seed_event(SEED_SUCCESS)["execution_id"],
        "FAILED",
        {"transcription": {"status": "FAILED"}},
        started_at="2024-12-11T10:00:00Z",
        completed_at="2024-12-11T10:05:30Z",
        error={"stage": "transcription", "error_code": "TranscriptionJobFailed", "error_message": "bad codec"},
        video_key="videos/standup.mp4",
    )
    tap = await subscribe_tap(services)

    # When it is finalized
    await send_final_event(services, event)
    await run_finalizer(FinalizerStage(services, config=fast_config()), services)

    # Then the job failed, the failure notice has no partial results, and one failure is counted
    job = await services.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "FAILED" and job["total_duration_seconds"] == 330
    (note,) = await notifications(services, tap)
    assert note["Subject"] == "❌ Video Processing Failed - standup.mp4"
    message = json.loads(note["Message"])
    assert message["error"] == {"stage": "transcription", "code": "TranscriptionJobFailed", "message": "bad codec"}
    assert "partial_results" not in message
    assert message["processing"]["duration"] == "5m 30s"
    assert message["actions"][0] == "Check the transcription job and the source video"
    sums = await metric_sums(services, "FAILED")
    assert (sums["ProcessingFailure"], sums["ProcessingSuccess"], sums["ProcessingDuration"]) == (1, 0, 330)


async def test_an_event_without_a_submitted_job_creates_its_tracking_item(fleet: Services) -> None:
    # Given a final event sent by hand: no job item, no job-id attribute
    event = seed_event(SEED_SUCCESS)
    url = await queue_url(fleet, fleet.settings.name_of(FINALIZE))
    await fleet.aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))

    # When it is finalized
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then the item exists with its stages map and a history holding the finalization
    job = await fleet.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "COMPLETED"
    assert job["stages"]["finalizer"]["final_status"] == "COMPLETED"
    assert [h["status"] for h in job["history"]] == ["FINALIZED"]


async def test_duplicate_deliveries_send_one_notification_and_record_metrics_once(fleet: Services) -> None:
    # Given the same final event delivered twice at once (SQS is at-least-once), and a short lease so the
    # copy that finds the first one in progress is retried within seconds
    services = with_cloudwatch(fleet)
    event = seed_event(SEED_SUCCESS)
    tap = await subscribe_tap(services)
    await send_final_event(services, event)
    await send_final_event(services, event)
    stage = FinalizerStage(services, config=fast_config())

    # When the worker handles both, and the event arrives once more later
    fast_lease = tuning(visibility_timeout=2)
    first = await run_finalizer(stage, services, tune=fast_lease)
    await send_final_event(services, event)
    second = await run_finalizer(stage, services, tune=fast_lease)

    # Then every delivery succeeded, but only one notification went out
    assert first.stats.succeeded == 2 and second.stats.succeeded == 1
    notes = await notifications(services, tap)
    assert [n["MessageAttributes"]["execution_id"]["Value"] for n in notes] == [event["execution_id"]]
    # And each metric was recorded once
    for name in FIVE_METRICS:
        points = await metric_points(services, name, "COMPLETED")
        assert sum(p["SampleCount"] for p in points) == 1, name
    # And the job's history holds one finalization
    job = await services.jobs.get(event["execution_id"])
    assert job is not None
    assert sum(h["status"] == "FINALIZED" for h in job["history"]) == 1


async def test_malformed_events_are_dead_lettered_at_once_with_the_reason(fleet: Services) -> None:
    # Given malformed final events on the queue, next to a good one
    url = await queue_url(fleet, fleet.settings.name_of(FINALIZE))
    good = seed_event(SEED_SUCCESS)
    bad = {
        "bad-uuid": {**seed_event(SEED_SUCCESS), "execution_id": "550e8400-..."},
        "unknown-status": seed_event(SEED_SUCCESS, status="DONE"),
        "unknown-stage-status": seed_event(SEED_SUCCESS, processing_results={"transcription": {"status": "SUCCEEDED"}}),
        "unsafe-uri": seed_event(
            SEED_SUCCESS,
            processing_results={"llm_processing": {"status": "COMPLETED", "output_uri": "s3://out/<x>.zip"}},
        ),
        "long-field": seed_event(SEED_FAILURE, error={**SEED_FAILURE["error"], "error_message": "x" * 100_000}),
        # SQS bodies stop at 1 MiB (a 10 MB one cannot be sent): the largest one is refused unread.
        "huge-body": seed_event(SEED_SUCCESS, padding="x" * 1_000_000),
    }
    for label, event in bad.items():
        await fleet.aws.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(event),
            MessageAttributes={"label": {"DataType": "String", "StringValue": label}},
        )
    await fleet.aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(good))
    tap = await subscribe_tap(fleet)

    # When the worker runs
    worker = await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then each bad event is in the DLQ after one receive, with its reason and the worker's name
    dead = {attribute(m, "label"): m for m in await dead_letters(fleet)}
    assert set(dead) == set(bad)
    reasons = {label: attribute(m, "fleet.error") for label, m in dead.items()}
    assert "execution_id" in reasons["bad-uuid"] and "UUID" in reasons["bad-uuid"]
    assert reasons["unknown-status"].startswith("invalid message: status:")
    assert "processing_results.transcription.status" in reasons["unknown-stage-status"]
    assert "output_uri" in reasons["unsafe-uri"] and "S3 key may only contain" in reasons["unsafe-uri"]
    assert "error.error_message" in reasons["long-field"] and "2048" in reasons["long-field"]
    assert attribute(dead["huge-body"], "fleet.error-code") == "TOO_LARGE"
    assert {attribute(m, "fleet.worker") for m in dead.values()} == {"finalizer"}
    assert {attribute(m, "fleet.attempts") for m in dead.values()} == {"1"}
    # And only the good one was finalized and notified
    assert worker.stats.succeeded == 1 and worker.stats.dead_lettered == len(bad)
    notes = await notifications(fleet, tap)
    assert [n["MessageAttributes"]["execution_id"]["Value"] for n in notes] == [good["execution_id"]]
    for event in bad.values():
        if event["execution_id"] != "550e8400-...":
            assert await fleet.jobs.get(event["execution_id"]) is None


async def test_presigned_links_download_the_outputs_and_never_reach_the_logs(
    fleet: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a transcript in S3 and the finalizer set to presigned download links
    caplog.set_level(logging.DEBUG, logger="fleet")  # botocore's own DEBUG prints signatures by design
    media = fleet.settings.name_of(MEDIA)
    await fleet.aws.s3.put_object(Bucket=media, Key="e1/transcript.json", Body=b'{"text": "hello"}')
    event = seed_event(SEED_SUCCESS)
    event["processing_results"]["transcription"]["transcript_uri"] = f"s3://{media}/e1/transcript.json"
    tap = await subscribe_tap(fleet)
    stage = FinalizerStage(fleet, config=fast_config(download_links="presigned", presign_expires_seconds=600))

    # When it is finalized
    await send_final_event(fleet, event)
    await run_finalizer(stage, fleet)

    # Then the notification's link downloads the transcript
    (note,) = await notifications(fleet, tap)
    link = json.loads(note["Message"])["results"]["transcription"]["download"]
    assert "X-Amz-Signature=" in link and "X-Amz-Expires=600" in link
    async with httpx.AsyncClient() as client:
        resp = await client.get(link)
    assert resp.status_code == 200 and resp.content == b'{"text": "hello"}'
    # And the one structured result line is logged, without any link or signature
    (line,) = [r for r in caplog.records if r.getMessage() == "job finalized"]
    assert line.__dict__["results"] == {
        "tracking_updated": True,
        "notification_sent": True,
        "metrics_recorded": True,
    }
    assert line.__dict__["summary"] == {
        "total_duration_seconds": 7380,
        "processing_cost_usd": 3.19,
        "documents_generated": 2,
    }
    assert "Signature" not in caplog.text and "X-Amz-Credential" not in caplog.text
    assert all("Signature" not in json.dumps(r.__dict__, default=str) for r in caplog.records)
