"""The clips worker's demo step: a generated 20 s source in fleet-media, its episode and two clips in
fleet-clips, a Begin Clip Generation event on the default bus, the worker until its queue is empty, and
each clip's metadata."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.app import open_services, run_workers
from shared.emulator import temporary_env
from shared.jobs import to_item
from shared.settings import FleetSettings, load_stage_settings
from workers.clips.binaries import find_tools
from workers.clips.config import ClipsSettings
from workers.clips.resources import CLIPS_TABLE, MEDIA
from workers.clips.sample import generate_source
from workers.clips.store import ClipStore
from workers.clips.submit import DETAIL_TYPE

TENANT, EPISODE = "demo-tenant", "demo-episode"
VIDEO_KEY = f"videos/{EPISODE}/source.mp4"
CLIPS: dict[str, list[tuple[str, str]]] = {
    # Cuts between keyframes: one re-encode pass, frame-exact.
    "highlights": [("00:00:01.500", "00:00:04"), ("00:00:07.250", "00:00:09"), ("00:00:15", "00:00:17.800")],
    # Cuts on the source's 2 s keyframes: stream copy (fast mode), no re-encode.
    "teaser": [("00:00:02", "00:00:06"), ("00:00:12", "00:00:14")],
}


async def demo(settings: FleetSettings, console: Console) -> None:
    tuned = {"wait_time_seconds": 1, "burst_idle_seconds": 1}
    settings = settings.model_copy(update={"workers": {**settings.workers, "clips": tuned}})
    config = load_stage_settings(ClipsSettings)
    ffmpeg = find_tools(config.ffmpeg, config.ffprobe).ffmpeg
    async with open_services(settings) as services:
        with tempfile.TemporaryDirectory(prefix="fleet-demo-") as tmp:
            source = await generate_source(ffmpeg, Path(tmp) / "source.mp4", seconds=20)
            body = source.read_bytes()
        bucket, table = settings.name_of(MEDIA), settings.name_of(CLIPS_TABLE)
        await services.aws.s3.put_object(Bucket=bucket, Key=VIDEO_KEY, Body=body, ContentType="video/mp4")
        pk = f"{TENANT}#{EPISODE}"
        ddb = services.aws.dynamodb
        await ddb.put_item(TableName=table, Item=to_item({"pk": pk, "sk": "episode", "videoKey": VIDEO_KEY}))
        for clip_id, spans in CLIPS.items():
            segments = [{"startTime": a, "endTime": b, "speaker": "host"} for a, b in spans]
            item = {"pk": pk, "sk": f"clip#{clip_id}", "status": "detected", "segments": segments}
            await ddb.put_item(TableName=table, Item=to_item(item))
        console.print(
            f"source: 20 s 640x360 H.264/AAC, {len(body):,} bytes → s3://{bucket}/{VIDEO_KEY}; "
            f"{len(CLIPS)} clips in {table}"
        )
        detail = f'{{"tenantId": "{TENANT}", "episodeId": "{EPISODE}"}}'
        resp = await services.aws.events.put_events(
            Entries=[{"Source": "fleet.demo", "DetailType": DETAIL_TYPE, "Detail": detail}]
        )
        console.print(f'"{DETAIL_TYPE}" put on the default bus (event {resp["Entries"][0].get("EventId", "?")})')

    # Fast mode on, so the keyframe-aligned teaser is stream-copied (the default re-encodes every clip).
    with temporary_env({"FLEET_CLIPS_FAST_MODE": "auto"}):
        stats = (await run_workers(settings, ["clips"], burst=True, install_signals=False))["clips"]
    console.print(
        f"clips worker (burst): received {stats.received} (1 event + {stats.received - 1} clip jobs), "
        f"succeeded {stats.succeeded}, dead-lettered {stats.dead_lettered}"
    )

    async with open_services(settings) as services:
        store = ClipStore(services.aws.dynamodb, settings.name_of(CLIPS_TABLE))
        table_out = Table("clip", "segments", "status", "duration", "resolution", "bytes", "mode", "s3Key")
        history = Table("clip", "statusHistory")
        for clip_id in CLIPS:
            clip: Any = await store.clip(TENANT, EPISODE, clip_id) or {}
            table_out.add_row(
                clip_id,
                str(len(clip.get("segments", []))),
                str(clip.get("status", "-")),
                f"{clip.get('duration', '-')} ({clip.get('durationSeconds', '-')} s)",
                str(clip.get("resolution", "-")),
                f"{int(clip.get('fileSize', 0)):,}",
                str(clip.get("renderMode", "-")),
                str(clip.get("s3Key", "-")),
            )
            steps = " → ".join(str(h["status"]) for h in clip.get("statusHistory", []))
            history.add_row(clip_id, steps)
        console.print(table_out)
        console.print(history)
