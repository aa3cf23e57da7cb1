"""Helpers for the media-sync tests: the provider server as a real subprocess, seeded credentials, stages
wired to a test's settings, and readers of what landed in S3 and `fleet-sync`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.resources import DeadLetters
from shared.settings import WorkerTuning
from shared.stage import Context, Message, Services
from tests.helpers import drain_queue, fast_tuning, queue_urls, run_burst, send
from workers.finalizer.resources import MEDIA
from workers.media_sync.app import MediaSync
from workers.media_sync.config import MediaSyncSettings, MiB
from workers.media_sync.download_stage import DownloadStage
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import DOWNLOAD_QUEUE, PROVIDER_SECRET, SYNC_QUEUE
from workers.media_sync.sync_stage import SyncStage

CLIENT_ID = "fleet-demo"
CLIENT_SECRET = "test-client-secret-8c1f"
REFRESH_TOKEN = "test-refresh-token-55aa"
ACCESS_TOKEN = "test-access-token-9e0b"


@pytest.fixture(scope="module")
def provider() -> Iterator[ProviderProcess]:
    with ProviderProcess("--client-secret", CLIENT_SECRET) as server:
        yield server


def reset(provider: ProviderProcess, library: list[dict[str, Any]], **knobs: Any) -> None:
    """A fresh provider: this library, the test tokens, and these knobs."""
    provider.reset(library=library, refresh_token=REFRESH_TOKEN, access_token=ACCESS_TOKEN, knobs=knobs)


def item(media_id: str, size: int, filename: str | None = None, version: int = 1) -> dict[str, Any]:
    return {"id": media_id, "filename": filename or f"{media_id}.mp4", "size": size, "version": version}


def config(provider: ProviderProcess, **overrides: Any) -> MediaSyncSettings:
    base: dict[str, Any] = {
        "provider_url": provider.url,
        "allow_loopback_http": True,
        "part_size": 5 * MiB,
        "parts_in_flight": 3,
        "multipart_threshold": 5 * MiB,
        "retry_base_seconds": 0.05,
        "batch_get_backoff_seconds": 0.05,
        "read_timeout": 10,
        "max_object_bytes": 1024 * MiB,
    }
    return MediaSyncSettings(**{**base, **overrides})


def credentials(expires_in: float, access_token: str = ACCESS_TOKEN) -> dict[str, str]:
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "access_token": access_token,
        "refresh_token": REFRESH_TOKEN,
        "expires_at": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(timespec="seconds"),
    }


async def seed_secret(services: Services, expires_in: float = 3 * 24 * 3600) -> None:
    """Credentials the provider accepts; `expires_in` below 24 h makes the next caller refresh."""
    name = services.settings.name_of(PROVIDER_SECRET)
    await services.aws.secretsmanager.put_secret_value(SecretId=name, SecretString=json.dumps(credentials(expires_in)))


def stages(services: Services, cfg: MediaSyncSettings) -> tuple[SyncStage, DownloadStage]:
    media = MediaSync(services, cfg)
    return SyncStage(services, media), DownloadStage(services, media)


def download_tuning(**overrides: Any) -> WorkerTuning:
    return fast_tuning(**{"concurrency": 4, "max_attempts": 3, **overrides})


async def run_downloads(
    services: Services, stage: DownloadStage, tuning: WorkerTuning | None = None, timeout: float = 90
) -> None:
    await run_burst(stage, services, tuning or download_tuning(), timeout=timeout, queue=DOWNLOAD_QUEUE)


async def run_sync(services: Services, stage: SyncStage) -> None:
    await run_burst(stage, services, fast_tuning(concurrency=1), queue=SYNC_QUEUE)


async def queued_downloads(services: Services) -> list[dict[str, Any]]:
    url, _ = await queue_urls(services, DOWNLOAD_QUEUE)
    return [json.loads(m["Body"]) for m in await drain_queue(services, url, wait=0)]


async def dead_letters(services: Services) -> list[dict[str, Any]]:
    sqs = services.aws.sqs
    url = (await sqs.get_queue_url(QueueName=services.settings.name_of(DeadLetters.of(DOWNLOAD_QUEUE))))["QueueUrl"]
    return await drain_queue(services, url, wait=0)


async def sync_item(services: Services, media_id: str) -> dict[str, Any]:
    stage_media = MediaSync(services, MediaSyncSettings())
    return await stage_media.store.get(media_id) or {}


async def object_bytes(services: Services, key: str) -> bytes:
    resp = await services.aws.s3.get_object(Bucket=services.settings.name_of(MEDIA), Key=key)
    async with resp["Body"] as body:
        return await body.read()


async def open_uploads(services: Services) -> list[dict[str, Any]]:
    resp = await services.aws.s3.list_multipart_uploads(Bucket=services.settings.name_of(MEDIA))
    return list(resp.get("Uploads", []))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served_ranges(provider: ProviderProcess, media_id: str) -> list[dict[str, Any]]:
    return [d for d in provider.stats()["downloads"] if d["id"] == media_id]


async def send_download(services: Services, body: dict[str, Any]) -> None:
    url, _ = await queue_urls(services, DOWNLOAD_QUEUE)
    await send(services, url, [body])


async def object_tags(services: Services, key: str) -> dict[str, str]:
    resp = await services.aws.s3.get_object_tagging(Bucket=services.settings.name_of(MEDIA), Key=key)
    return {t["Key"]: t["Value"] for t in resp["TagSet"]}


def context(services: Services, attempt: int = 1, **tuning: Any) -> Context:
    """What the runtime hands a handler, for tests that call `handle()` attempt by attempt."""
    message = Message(id=f"msg-{attempt}", receipt_handle="-", body="", receive_count=attempt, sent_at=None)
    return Context(worker="download", message=message, services=services, tuning=download_tuning(**tuning))
