"""`finalizer`: the last stage of every pipeline (seeds/000, re-platformed from Lambda to a queue worker).

Per final event, in the seed's order of importance:
1. tracking (critical): the job's final state in fleet-jobs, retried 3× with backoff, else the message
   is retried by the runtime and finally dead-lettered;
2. notification (important): SNS publish; a failure is logged and reported, the job is still finalized;
3. metrics (nice-to-have): the five CloudWatch metrics; a failure is logged only.

All three run at most once per (job, final status), however often SQS delivers the event: a conditional
lease in fleet-leases guards them, and a redelivery gets the stored result back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import TypeAdapter, ValidationError

from shared.idempotency import Idempotency
from shared.registry import discover
from shared.resources import JOBS, LEASES, Bucket
from shared.settings import load_stage_settings
from shared.stage import Context, Services, parse_body
from workers.finalizer.config import FinalizerSettings
from workers.finalizer.metrics import record_metrics
from workers.finalizer.models import BucketName, FinalEvent, ObjectKey
from workers.finalizer.notification import (
    DownloadLinks,
    Notifier,
    build_notification,
    object_size,
)
from workers.finalizer.resources import NOTIFICATIONS
from workers.finalizer.summary import Summary, number
from workers.finalizer.tracking import RetryPolicy, Tracker, TrackingClientFactory

if TYPE_CHECKING:
    from types_aiobotocore_sns import SNSClient

log = logging.getLogger("fleet.finalizer")

_object_key: TypeAdapter[str] = TypeAdapter(ObjectKey)
_bucket: TypeAdapter[str] = TypeAdapter(BucketName)


class ResultSummary(TypedDict):
    total_duration_seconds: int | float | None
    processing_cost_usd: float
    documents_generated: int


class FinalizeResult(TypedDict):
    """The seed's output body (seeds/000 §3)."""

    status: str
    execution_id: str
    final_status: str
    notification_sent: bool
    metrics_recorded: bool
    tracking_updated: bool
    summary: ResultSummary


class FinalizerStage:
    name = "finalizer"
    queue = "finalize"

    def __init__(
        self,
        services: Services,
        *,
        config: FinalizerSettings | None = None,
        tracking_client: TrackingClientFactory | None = None,
        sns: SNSClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        settings = services.settings
        self.services = services
        self.config = config or load_stage_settings(FinalizerSettings)
        self.tracker = Tracker(
            settings.name_of(JOBS),
            tracking_client or (lambda: contextlib.nullcontext(services.aws.dynamodb_once)),
            RetryPolicy(
                self.config.tracking_max_attempts,
                self.config.tracking_retry_base,
                self.config.tracking_retry_jitter,
            ),
            sleep=sleep,
            rng=rng,
        )
        self.notifier = Notifier(
            sns or services.aws.sns_once,
            settings.name_of(NOTIFICATIONS),
            topic_arn=self.config.topic_arn,
        )
        self.links = DownloadLinks(
            lambda: contextlib.nullcontext(services.aws.s3),  # process-wide, SigV4
            mode=self.config.download_links,
            region=settings.region,
            expires_seconds=self.config.presign_expires_seconds,
            presign_buckets=(
                self.config.presign_buckets
                if self.config.presign_buckets is not None
                else [settings.name_of(b) for b in discover().resources() if isinstance(b, Bucket)]
            ),
        )
        self.guard = Idempotency(services.aws.dynamodb, settings.name_of(LEASES))

    def parse(self, body: str) -> FinalEvent:
        return parse_body(FinalEvent, body)

    async def handle(self, message: FinalEvent, ctx: Context) -> None:
        await self.finalize(message, lease_seconds=ctx.tuning.visibility_timeout)

    async def finalize(self, event: FinalEvent, *, lease_seconds: float) -> FinalizeResult:
        started = time.monotonic()
        summary = Summary.of(event)
        ran = False

        async def once() -> FinalizeResult:
            nonlocal ran
            ran = True
            return await self._finalize(event, summary)

        # Keyed by outcome too: a job re-run after a failure that now completes is worth a new notice.
        key = f"finalizer#{event.execution_id}#{summary.final_status}"
        result = await self.guard.run(key, once, lease_seconds=lease_seconds)
        log.info(
            "job finalized" if ran else "job already finalized: nothing done again",
            extra={
                "action": "finalize_execution",
                "execution_id": result["execution_id"],
                "final_status": result["final_status"],
                "results": {
                    "tracking_updated": result["tracking_updated"],
                    "notification_sent": result["notification_sent"],
                    "metrics_recorded": result["metrics_recorded"],
                },
                "summary": result["summary"],
                "duplicate": not ran,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return result

    async def _finalize(self, event: FinalEvent, summary: Summary) -> FinalizeResult:
        tracked = await self.tracker.finalize(summary)
        if tracked.superseded:
            # A later final event already decided this job (a late redelivery of an earlier one): nothing
            # to announce, and the job's status stays what the later event made it.
            log.warning(
                "final event superseded by a later one: not applied",
                extra={"execution_id": summary.execution_id, "job_status": tracked.item.get("status")},
            )
            notified = recorded = False
        else:
            # A failure event rarely repeats the video; the job item (fleet submit's detail) may know it.
            video_key = event.video_key or _from_job(tracked.item, "video_key", _object_key)
            bucket = event.bucket or _from_job(tracked.item, "bucket", _bucket)
            notified = await self._notify(event, summary, video_key, bucket)
            recorded = await record_metrics(self.services.metrics, summary, self.services.settings.environment)
        return {
            "status": "success",
            "execution_id": summary.execution_id,
            "final_status": summary.final_status,
            "notification_sent": notified,
            "metrics_recorded": recorded,
            "tracking_updated": not tracked.superseded,
            "summary": {
                "total_duration_seconds": (
                    number(summary.duration_seconds) if summary.duration_seconds is not None else None
                ),
                "processing_cost_usd": float(summary.cost_usd),
                "documents_generated": summary.documents_generated,
            },
        }

    async def _notify(self, event: FinalEvent, summary: Summary, video_key: str | None, bucket: str | None) -> bool:
        try:
            links = await self.links.for_stages(event, include_failed=summary.final_status == "COMPLETED")
            size = await object_size(self.services.aws.s3, bucket, video_key)
            notification = build_notification(event, summary, links, video_key=video_key, video_size=size)
        except Exception as exc:
            log.error("notification not built", extra={"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return False
        return await self.notifier.publish(notification)


def _from_job(item: dict[str, Any], name: str, adapter: TypeAdapter[str]) -> str | None:
    """A value other code wrote to the job item, used only if it passes the event's own validation."""
    detail = item.get("detail")
    value = item.get(name) or (detail.get(name) if isinstance(detail, dict) else None)
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
