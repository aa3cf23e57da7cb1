"""media-sync as ECS runs it: `fleet worker download` processes, killed with SIGKILL mid-file and racing
each other for one token refresh."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.stage import Services
from tests.media_sync_helpers import (
    config,
    download_tuning,
    item,
    object_bytes,
    open_uploads,
    provider,
    reset,
    run_downloads,
    seed_secret,
    send_download,
    served_ranges,
    sha256,
    stages,
    sync_item,
)
from tests.test_process import fleet_cmd, fleet_env, wait_for_line
from workers.media_sync.config import MiB
from workers.media_sync.provider.content import sha256_of
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import PROVIDER_SECRET

__all__ = ["provider"]


def worker_env(services: Services, provider: ProviderProcess, **extra: str) -> dict[str, str]:
    return fleet_env(
        services.settings,
        FLEET_LOG_LEVEL="INFO",
        FLEET_MEDIA_SYNC_PROVIDER_URL=provider.url,
        FLEET_MEDIA_SYNC_ALLOW_LOOPBACK_HTTP="true",
        FLEET_MEDIA_SYNC_PART_SIZE=str(5 * MiB),
        FLEET_MEDIA_SYNC_PARTS_IN_FLIGHT="2",
        FLEET_MEDIA_SYNC_MULTIPART_THRESHOLD=str(5 * MiB),
        FLEET_MEDIA_SYNC_MAX_OBJECT_BYTES=str(1024 * MiB),
        FLEET_WORKERS__DOWNLOAD__WAIT_TIME_SECONDS="1",
        **extra,
    )


@contextmanager
def worker(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen(fleet_cmd("worker", "download"), env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
        proc.stderr.close()  # type: ignore[union-attr]


async def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_a_worker_killed_mid_file_resumes_from_the_uploaded_parts_on_redelivery(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a 30 MiB item on a slow link (3 MB/s), and a download worker process streaming it in 5 MiB parts
    size, part = 30 * MiB, 5 * MiB
    reset(provider, [item("long", size)], rate=3_000_000)
    await seed_secret(fleet)
    await send_download(fleet, {"media_id": "long", "filename": "long.mp4", "size": size})
    env = worker_env(fleet, provider, FLEET_WORKERS__DOWNLOAD__VISIBILITY_TIMEOUT="6")
    _, download = stages(fleet, config(provider, part_size=part, parts_in_flight=2))

    with worker(env) as (proc, _lines):
        # When it is killed with SIGKILL once at least two parts are in S3
        async def two_parts() -> bool:
            record = await sync_item(fleet, "long")
            if not record.get("upload_id"):
                return False
            parts = await download.target.parts(record["upload_key"], record["upload_id"])
            return parts is not None and len(parts) >= 2

        await wait_for(two_parts, "two uploaded parts")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        served_before = sum(d["sent"] for d in served_ranges(provider, "long"))
    assert served_before < size

    # And the message is redelivered, after its visibility timeout, to a new worker (link no longer slow)
    provider.knobs(rate=None)
    await run_downloads(fleet, download, download_tuning(max_attempts=5), timeout=120)

    # Then the new attempt listed the uploaded parts and asked only for what was missing, with If-Range
    served = served_ranges(provider, "long")
    assert len(served) == 2, served
    resumed_at = int(served[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert resumed_at >= 2 * part and resumed_at % part == 0
    assert served[1]["if_range"] and served[1]["status"] == 206
    assert served[1]["sent"] == size - resumed_at
    # And the object is byte-identical, its SHA-256 recorded, and no upload is left open
    data = await object_bytes(fleet, "videos/long/long.mp4")
    assert sha256(data) == sha256_of("long", 1, size)
    record = await sync_item(fleet, "long")
    assert (record["status"], record["sha256"]) == ("COMPLETED", sha256(data))
    assert await open_uploads(fleet) == []


async def test_two_worker_processes_refresh_an_expiring_token_once_and_write_it_back_once(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a token expiring within the threshold, a slow token endpoint, and two download worker processes
    reset(provider, [item(f"p{i}", 2000) for i in range(8)], slow={"token": 1.0})
    await seed_secret(fleet, expires_in=3600)
    secret_name = fleet.settings.name_of(PROVIDER_SECRET)
    before = await fleet.aws.secretsmanager.list_secret_version_ids(SecretId=secret_name, IncludeDeprecated=True)
    env = worker_env(fleet, provider, FLEET_WORKERS__DOWNLOAD__CONCURRENCY="4")
    with worker(env) as (a, lines_a), worker(env) as (b, lines_b):
        await wait_for_line(lines_a, "worker started")
        await wait_for_line(lines_b, "worker started")

        # When eight downloads arrive at once, each needing the token
        for i in range(8):
            await send_download(fleet, {"media_id": f"p{i}", "filename": f"p{i}.mp4", "size": 2000})

        async def all_done() -> bool:
            return all([(await sync_item(fleet, f"p{i}")).get("status") == "COMPLETED" for i in range(8)])

        await wait_for(all_done, "eight completed downloads")
        a.send_signal(signal.SIGTERM)
        b.send_signal(signal.SIGTERM)
        await asyncio.to_thread(a.wait, 30)
        await asyncio.to_thread(b.wait, 30)

    # Then the provider saw exactly one refresh, and the secret got exactly one new version
    assert provider.stats()["token_refreshes"] == 1
    after = await fleet.aws.secretsmanager.list_secret_version_ids(SecretId=secret_name, IncludeDeprecated=True)
    assert len(after["Versions"]) == len(before["Versions"]) + 1
    stored = json.loads((await fleet.aws.secretsmanager.get_secret_value(SecretId=secret_name))["SecretString"])
    synced = [json.loads(line) for line in lines_a + lines_b if '"media synced"' in line]
    assert len(synced) == 8
    assert all(stored["access_token"] not in line for line in lines_a + lines_b)
