"""Test helpers for the finalizer: the seed's events, a queue subscribed to the notifications topic,
CloudWatch read-back, and a burst run of the real runtime."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.metrics import Metrics
from shared.runtime import Worker
from shared.settings import WorkerTuning
from shared.stage import Services
from tests.helpers import fast_tuning
from workers.finalizer.config import FinalizerSettings
from workers.finalizer.demo import subscribe_queue
from workers.finalizer.resources import FINALIZE
from workers.finalizer.stage import FinalizerStage

# seeds/000 §3, verbatim (the failure event's elided id completed to a real UUID)
SEED_SUCCESS: dict[str, Any] = {
    "execution_id": "550e8400-e29b-41d4-a716-446655440000",
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
SEED_FAILURE: dict[str, Any] = {
    "execution_id": "550e8400-e29b-41d4-a716-446655440000",
    "status": "FAILED",
    "error": {
        "stage": "llm_processing",
        "error_code": "BedrockQuotaExceeded",
        "error_message": "Rate limit exceeded",
        "timestamp": "2024-12-11T11:30:00Z",
    },
    "processing_results": {"transcription": {"status": "COMPLETED"}, "llm_processing": {"status": "FAILED"}},
}
FIVE_METRICS = (
    "ProcessingDuration",
    "ProcessingSuccess",
    "ProcessingFailure",
    "TokensProcessed",
    "ProcessingCost",
)


def seed_event(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a seed event with a fresh execution id (tests share one emulator)."""
    event = copy.deepcopy(base)
    event["execution_id"] = str(uuid.uuid4())
    event.update(changes)
    return event


def fast_config(**overrides: Any) -> FinalizerSettings:
    values: dict[str, Any] = {"tracking_retry_base": 0.05, "tracking_retry_jitter": 0.01, **overrides}
    return FinalizerSettings(**values)


tuning = fast_tuning


async def run_finalizer(
    stage: FinalizerStage, services: Services, *, tune: WorkerTuning | None = None, timeout: float = 60
) -> Worker:
    """The real runtime, in burst mode, until the finalize queue is empty."""
    worker = await Worker.create(stage, services, queue=FINALIZE, tuning=tune or tuning(), burst=True)
    await asyncio.wait_for(worker.run(), timeout)
    return worker


def with_cloudwatch(services: Services, environment: str | None = None) -> Services:
    """The same clients, with metrics sent by PutMetricData under an Environment no other test uses."""
    env = environment or f"test-{uuid.uuid4().hex[:10]}"
    settings = services.settings.model_copy(update={"environment": env, "metrics_mode": "cloudwatch"})
    metrics = Metrics("cloudwatch", settings.metrics_namespace, cloudwatch=services.aws.cloudwatch)
    return Services(settings=settings, aws=services.aws, metrics=metrics, jobs=services.jobs)


async def subscribe_tap(services: Services) -> str:
    url, _ = await subscribe_queue(services, services.settings.name("tap"))
    return url


async def notifications(services: Services, url: str) -> list[dict[str, Any]]:
    """Every SNS envelope delivered to the tap queue so far (consumed)."""
    sqs = services.aws.sqs
    out: list[dict[str, Any]] = []
    while True:
        # SNS delivers to SQS before Publish returns; one short wait covers a slow emulator.
        wait = 0 if out else 1
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
        batch = resp.get("Messages", [])
        if not batch:
            return out
        for raw in batch:
            out.append(json.loads(raw.get("Body", "{}")))
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=raw["ReceiptHandle"])


async def metric_points(services: Services, name: str, status: str) -> list[dict[str, Any]]:
    """Datapoints (Sum, SampleCount, Unit) of one finalizer metric for this test's environment."""
    now = datetime.now(UTC)
    resp = await services.aws.cloudwatch.get_metric_statistics(
        Namespace=services.settings.metrics_namespace,
        MetricName=name,
        Dimensions=[
            {"Name": "Environment", "Value": services.settings.environment},
            {"Name": "Status", "Value": status},
        ],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=3600,
        Statistics=["Sum", "SampleCount"],
    )
    return [dict(p) for p in resp.get("Datapoints", [])]


async def metric_sums(services: Services, status: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name in FIVE_METRICS:
        points = await metric_points(services, name, status)
        if points:
            sums[name] = sum(float(p["Sum"]) for p in points)
    return sums


async def queue_url(services: Services, name: str) -> str:
    return (await services.aws.sqs.get_queue_url(QueueName=name))["QueueUrl"]


def attribute(message: dict[str, Any], name: str) -> str:
    return str(message["MessageAttributes"][name]["StringValue"])
