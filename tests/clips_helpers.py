"""Shared set-up for the clips tests: a source in the media bucket, its episode item, the event, the worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from shared.jobs import to_item
from shared.runtime import Worker
from shared.stage import JOB_ID_ATTRIBUTE, Services
from tests.helpers import drain_queue, fast_tuning, queue_urls, run_burst
from workers.clips.config import ClipsSettings
from workers.clips.resources import CLIPS, CLIPS_TABLE, MEDIA
from workers.clips.stage import ClipsStage
from workers.clips.store import ClipStore

TENANT = "acme"


def clip_config(**overrides: Any) -> ClipsSettings:
    return ClipsSettings(**{"progress_interval": 0.2, "stall_timeout": 60, **overrides})


async def seed_episode(
    fleet: Services,
    episode: str,
    source: Path | bytes | None,
    *,
    content_type: str = "video/mp4",
    tenant: str = TENANT,
) -> str:
    """Upload `source` (unless None: a missing source) and write the episode item pointing at it."""
    key = f"videos/{episode}/source.mp4"
    if source is not None:
        body = await asyncio.to_thread(source.read_bytes) if isinstance(source, Path) else source
        await fleet.aws.s3.put_object(
            Bucket=fleet.settings.name_of(MEDIA), Key=key, Body=body, ContentType=content_type
        )
    item = {"pk": f"{tenant}#{episode}", "sk": "episode", "videoKey": key}
    await fleet.aws.dynamodb.put_item(TableName=fleet.settings.name_of(CLIPS_TABLE), Item=to_item(item))
    return key


def segments(*spans: tuple[str, str]) -> list[dict[str, str]]:
    return [{"startTime": a, "endTime": b, "speaker": "host", "text": "..."} for a, b in spans]


def begin_event(
    episode: str, clips: list[dict[str, Any]] | None = None, *, event_id: str | None = None, tenant: str = TENANT
) -> dict[str, Any]:
    """The envelope an EventBridge rule delivers to SQS."""
    detail: dict[str, Any] = {"tenantId": tenant, "episodeId": episode}
    if clips is not None:
        detail["clips"] = clips
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": "Begin Clip Generation",
        "source": "nullcheck.clips",
        "time": "2026-11-27T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


async def put_on_queue(fleet: Services, body: dict[str, Any] | str, job_id: str | None = None) -> None:
    url, _ = await queue_urls(fleet, CLIPS)
    attributes: Any = {JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": job_id}} if job_id else {}
    await fleet.aws.sqs.send_message(
        QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body), MessageAttributes=attributes
    )


async def run_clips(fleet: Services, config: ClipsSettings | None = None, **tuning: Any) -> Worker:
    stage = ClipsStage(fleet, config=config or clip_config())
    return await run_burst(
        stage, fleet, fast_tuning(**{"concurrency": 2, "max_attempts": 3, **tuning}), timeout=110, queue=CLIPS
    )


async def clip_item(fleet: Services, episode: str, clip: str, tenant: str = TENANT) -> dict[str, Any]:
    store = ClipStore(fleet.aws.dynamodb, fleet.settings.name_of(CLIPS_TABLE))
    item = await store.clip(tenant, episode, clip)
    assert item is not None, f"no item for clip {clip}"
    return item


def statuses(item: dict[str, Any]) -> list[str]:
    return [h["status"] for h in item.get("statusHistory", [])]


async def download(fleet: Services, key: str, path: Path) -> Path:
    resp = await fleet.aws.s3.get_object(Bucket=fleet.settings.name_of(MEDIA), Key=key)
    async with resp["Body"] as body:
        data = await body.read()
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def dead_letters(fleet: Services) -> list[dict[str, Any]]:
    _, dlq = await queue_urls(fleet, CLIPS)
    return await drain_queue(fleet, dlq)


def attribute(message: dict[str, Any], name: str) -> str:
    return str(message.get("MessageAttributes", {}).get(name, {}).get("StringValue", ""))
