"""The event that closes a job: every pipeline's last stage sends one to `fleet-finalize`, in the shape
of the Lambda-era finalizer's input (seeds/000 §3), with `processing_results` keyed by the pipeline's own
stage names."""

from __future__ import annotations

import json
from typing import Any, Literal

from shared.jobs import now_iso
from shared.stage import JOB_ID_ATTRIBUTE, Services
from workers.finalizer.resources import FINALIZE

StageStatus = Literal["COMPLETED", "PARTIAL", "FAILED"]


def final_event(
    execution_id: str,
    status: Literal["COMPLETED", "FAILED"],
    processing_results: dict[str, dict[str, Any]],
    *,
    started_at: str | None = None,
    completed_at: str | None = None,
    error: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a success or failure event. `error` is `{stage, error_code, error_message, timestamp}`."""
    event: dict[str, Any] = {
        "execution_id": execution_id,
        "status": status,
        "processing_results": processing_results,
        "timestamps": {"started_at": started_at or now_iso(), "completed_at": completed_at or now_iso()},
        **extra,
    }
    if error is not None:
        event["error"] = {"timestamp": now_iso(), **error}
    return event


async def send_final_event(services: Services, event: dict[str, Any]) -> None:
    """Hand the job to the finalizer: its queue may now record on the job (if there is a job record)."""
    sqs = services.aws.sqs
    name = services.settings.name_of(FINALIZE)
    await services.jobs.entitle(str(event["execution_id"]), name)
    url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    await sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(event, default=str),
        MessageAttributes={JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": str(event["execution_id"])}},
    )
