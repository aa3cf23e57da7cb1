"""The finalizer's demo step: a success, a partial and a failure event through the real worker, with the
SNS notifications read back from a queue subscribed to the topic."""

from __future__ import annotations

import json
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.app import open_services, run_workers, send_job
from shared.jobs import now_iso
from shared.settings import FleetSettings
from shared.stage import Services
from workers.finalizer.resources import FINALIZE, NOTIFICATIONS

TAP_QUEUE = "fleet-finalizer-demo-tap"


def demo_events() -> dict[str, dict[str, Any]]:
    """The seed's example events (seeds/000 §3), each with a fresh execution id."""
    success = {
        "execution_id": str(uuid.uuid4()),
        "status": "COMPLETED",
        "video_key": "videos/meeting.mp4",
        "bucket": "input-bucket",
        "processing_results": {
            "transcription": {
                "status": "COMPLETED",
                "duration_seconds": 7200,
                "speakers_detected": 3,
                "transcript_uri": "s3://transcripts/550e8400/transcript.json",
            },
            "llm_processing": {
                "status": "COMPLETED",
                "documents_generated": ["training", "troubleshooting"],
                "output_uri": "s3://output/550e8400/documents.zip",
                "document_size_bytes": 2457600,
                "tokens_used": 45000,
                "processing_time_seconds": 180,
            },
        },
        "timestamps": {"started_at": "2024-12-11T10:00:00Z", "completed_at": "2024-12-11T12:03:00Z"},
    }
    partial = json.loads(json.dumps(success))
    partial["execution_id"] = str(uuid.uuid4())
    partial["video_key"] = "videos/all-hands.mp4"
    partial["processing_results"]["llm_processing"] = {
        "status": "PARTIAL",
        "documents_generated": ["training"],
        "tokens_used": 12000,
    }
    failure = {
        "execution_id": str(uuid.uuid4()),
        "status": "FAILED",
        "video_key": "videos/standup.mp4",
        "error": {
            "stage": "transcription",
            "error_code": "TranscriptionJobFailed",
            "error_message": "Unsupported audio codec",
            "timestamp": now_iso(),
        },
        "processing_results": {"transcription": {"status": "FAILED"}},
    }
    return {"success": success, "partial": partial, "failure": failure}


async def subscribe_queue(services: Services, queue_name: str) -> tuple[str, str]:
    """A queue subscribed to the notifications topic; returns (queue URL, subscription ARN)."""
    settings = services.settings
    sqs, sns = services.aws.sqs, services.aws.sns
    url = (await sqs.create_queue(QueueName=queue_name))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    # CreateTopic is idempotent and the only call that returns an existing topic's ARN directly.
    topic = (await sns.create_topic(Name=settings.name_of(NOTIFICATIONS)))["TopicArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }
        ],
    }
    await sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    sub = await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, ReturnSubscriptionArn=True)
    return url, sub["SubscriptionArn"]


async def read_notifications(services: Services, url: str) -> dict[str, dict[str, Any]]:
    """SNS envelopes in the queue, by their execution_id attribute."""
    sqs = services.aws.sqs
    found: dict[str, dict[str, Any]] = {}
    while True:
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        batch = resp.get("Messages", [])
        if not batch:
            return found
        for raw in batch:
            envelope = json.loads(raw.get("Body", "{}"))
            execution_id = envelope.get("MessageAttributes", {}).get("execution_id", {}).get("Value")
            if execution_id:
                found[execution_id] = envelope
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=raw["ReceiptHandle"])


async def demo(settings: FleetSettings, console: Console) -> None:
    tuned = {"wait_time_seconds": 1, "burst_idle_seconds": 1}
    settings = settings.model_copy(update={"workers": {**settings.workers, "finalizer": tuned}})
    events = demo_events()
    async with open_services(settings) as services:
        tap_url, subscription = await subscribe_queue(services, settings.name(TAP_QUEUE))
        for event in events.values():
            detail = {"video_key": event["video_key"]}
            await send_job(services, FINALIZE, event, kind="demo", job_id=event["execution_id"], detail=detail)
        console.print(f"sent {len(events)} final events to {settings.name_of(FINALIZE)}")

    stats = (await run_workers(settings, ["finalizer"], burst=True))["finalizer"]
    console.print(
        f"finalizer worker (burst): received {stats.received}, succeeded {stats.succeeded}, "
        f"dead-lettered {stats.dead_lettered}"
    )

    async with open_services(settings) as services:
        notes = await read_notifications(services, tap_url)
        # Every job closed in this run: the seed's three events, and whatever earlier demo steps'
        # pipelines handed over (their notifications reached the tap too).
        labels = {event["execution_id"]: f"seed {label}" for label, event in events.items()}
        labels.update({job_id: "" for job_id in notes if job_id not in labels})
        table = Table("job", "execution id", "final status", "cost (USD)", "notified", "subject")
        for job_id, label in labels.items():
            job: dict[str, Any] = await services.jobs.get(job_id) or {}
            note = notes.get(job_id)
            cost = job.get("cost_estimate_usd")
            table.add_row(
                label or f"{job.get('kind', '?')} job",
                job_id[:8],
                str(job.get("status", "-")),
                f"{cost:.2f}" if cost is not None else "-",
                "yes" if note else "no",
                str(note.get("Subject", "")) if note else "-",
            )
        console.print(table)
        await services.aws.sns.unsubscribe(SubscriptionArn=subscription)
        await services.aws.sqs.delete_queue(QueueUrl=tap_url)
