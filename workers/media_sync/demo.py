"""The media-sync demo step: the provider server (a subprocess) with a small library, an expiring token, a
dropped connection and an item deleted at source; `fleet submit sync`, then both workers, with the bytes
transferred shown as they go."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from shared.app import open_services, run_workers, send_job
from shared.emulator import temporary_env
from shared.settings import FleetSettings
from workers.media_sync.config import MiB
from workers.media_sync.provider.content import sha256_of
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import PROVIDER_SECRET, SYNC_QUEUE
from workers.media_sync.store import SyncStore

LIBRARY: list[dict[str, Any]] = [
    {"id": "gp-0001", "filename": "Morning surf.mp4", "size": 3 * MiB},
    {"id": "gp-0002", "filename": "../../Trail run (4K).mp4", "size": 9 * MiB},
    {"id": "gp-0003", "filename": "Dive-3.mp4", "size": 24 * MiB},
    {"id": "gp-0004", "filename": "timelapse.mov", "size": 1536 * 1024},
    {"id": "gp-0005", "filename": "Ski day.mp4", "size": 16 * MiB},
    {"id": "gp-0006", "filename": "deleted-at-source.mp4", "size": 2 * MiB},
]
DELETED = "gp-0006"
DROPPED = "gp-0003"
CLIENT_SECRET = "demo-client-secret"


async def demo(settings: FleetSettings, console: Console) -> None:
    tuned = {"wait_time_seconds": 1, "burst_idle_seconds": 1}
    settings = settings.model_copy(
        update={"workers": {**settings.workers, "sync": tuned, "download": {**tuned, "concurrency": 3}}}
    )
    with ProviderProcess("--client-secret", CLIENT_SECRET) as provider:
        provider.reset(
            library=LIBRARY,
            refresh_token="demo-refresh-token",
            knobs={"rate": 40_000_000, "not_found": [DELETED], "drop_after": {DROPPED: 10 * MiB}},
        )
        env = {
            "FLEET_MEDIA_SYNC_PROVIDER_URL": provider.url,
            "FLEET_MEDIA_SYNC_ALLOW_LOOPBACK_HTTP": "true",  # the demo's provider is on loopback
            "FLEET_MEDIA_SYNC_PART_SIZE": str(8 * MiB),
            "FLEET_MEDIA_SYNC_MULTIPART_THRESHOLD": str(8 * MiB),
        }
        with temporary_env(env):
            async with open_services(settings) as services:
                # Credentials whose access token expires in 2 h: inside the 24 h threshold, so it is refreshed.
                expires = datetime.now(UTC) + timedelta(hours=2)
                await services.aws.secretsmanager.put_secret_value(
                    SecretId=settings.name_of(PROVIDER_SECRET),
                    SecretString=json.dumps(
                        {
                            "client_id": "fleet-demo",
                            "client_secret": CLIENT_SECRET,
                            "access_token": "demo-expiring-access-token",
                            "refresh_token": "demo-refresh-token",
                            "expires_at": expires.isoformat(timespec="seconds"),
                        }
                    ),
                )
                job_id = await send_job(services, SYNC_QUEUE, {"action": "sync"}, kind="sync", terminal="sync")
            console.print(f"provider at {provider.url}: {len(LIBRARY)} items; fleet submit sync -> job {job_id[:8]}")

            sync = (await run_workers(settings, ["sync"], burst=True, install_signals=False))["sync"]
            stats = await asyncio.to_thread(provider.stats)
            console.print(
                f"sync worker: {stats['list_requests']} listing page(s), token refreshed "
                f"{stats['token_refreshes']}x and written back; jobs succeeded {sync.succeeded}"
            )
            total = sum(int(i["size"]) for i in LIBRARY if i["id"] != DELETED)
            download = await _with_progress(console, provider, total, settings)
            console.print(
                f"download worker: received {download.received}, succeeded {download.succeeded}, "
                f"dead-lettered {download.dead_lettered}"
            )
        await _summary(console, settings, provider)


async def _with_progress(console: Console, provider: ProviderProcess, total: int, settings: FleetSettings) -> Any:
    columns = (TextColumn("bytes transferred"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("download", total=total)
        worker = asyncio.create_task(run_workers(settings, ["download"], burst=True, install_signals=False))
        while not worker.done():
            stats = await asyncio.to_thread(provider.stats)
            progress.update(task, completed=min(total, sum(stats["bytes_sent"].values())))
            await asyncio.wait({worker}, timeout=0.25)
        stats = await asyncio.to_thread(provider.stats)
        progress.update(task, completed=min(total, sum(stats["bytes_sent"].values())))
    return worker.result()["download"]


async def _summary(console: Console, settings: FleetSettings, provider: ProviderProcess) -> None:
    from workers.media_sync.resources import SYNC_TABLE

    async with open_services(settings) as services:
        store = SyncStore(services.aws.dynamodb, settings.name_of(SYNC_TABLE))
        table = Table("media", "s3 key", "bytes", "status", "sha256", "matches source")
        for entry in LIBRARY:
            record = await store.get(str(entry["id"])) or {}
            sha = str(record.get("sha256", ""))
            ok = sha == sha256_of(str(entry["id"]), 1, int(entry["size"])) if sha else None
            table.add_row(
                str(entry["id"]),
                str(record.get("s3_key", "-")),
                f"{record.get('bytes', 0):,}",
                str(record.get("status", "-")),
                sha[:16] or "-",
                {True: "yes", False: "NO", None: "-"}[ok],
            )
        console.print(table)
    drops = [d for d in provider.stats()["downloads"] if d["id"] == DROPPED]
    if len(drops) > 1 and drops[1].get("range"):
        console.print(
            f"{DROPPED}: connection dropped after {drops[0]['sent'] / MiB:.1f} MiB, resumed with "
            f"Range {drops[1]['range']} (If-Range {drops[1]['if_range']})"
        )
