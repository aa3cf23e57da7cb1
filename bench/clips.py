"""Clip generation: fleet's worker (range reads through a presigned URL) vs the seed's approach (download the
whole source, then cut), in one run, reading the same source through the same emulator over a link
throttled to a realistic bandwidth.

- The source: a generated 30-minute 1280x720 25 fps H.264/AAC MP4 (constant 8 Mbit/s video, 2 s keyframes,
  moov first), cached under ~/.cache/fleet/clips/ (generated once, under `nice`: a 60 s piece encoded,
  then stream-copied end to end into 30 minutes).
- The clip: 3 segments, 30 s in all, spread over the source (not keyframe-aligned: a full re-encode).
- The link: moto (a subprocess) behind a TCP proxy that passes at most `--rate` MB/s from server to client
  and counts those bytes. Every AWS call of both approaches goes through it.
- fleet: a Begin Clip Generation event on fleet-clips, the real clips worker (fan-out, probe, one ffmpeg
  pass, streamed upload, probe), timed from the event until the clip item reads Generation Complete.
- seed: GetObject of the whole source to a local file, the same one-pass ffmpeg render from that file,
  PutObject of the clip; timed end to end.

Stock moto answers every GET by reading the whole object into memory, then slicing the range: about 0.4 s
per request on a 512 MB object, whatever the range. That is moto's cost, not S3's (a Range GET costs what it
returns), and it would bury what is measured here, so the bench's moto serves a GET's bytes from the stored
object lazily: a Range GET reads its range, a full GET streams (`--stock-moto` turns this off).

    python bench/clips.py [--rate 50] [--minutes 30] [--video-bitrate 8M] [--runs 1]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shared.app import open_services  # noqa: E402
from shared.bootstrap import Bootstrapper  # noqa: E402
from shared.emulator import free_port, stop_process, wait_until_up  # noqa: E402
from shared.jobs import to_item  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from shared.registry import Registry  # noqa: E402
from shared.runtime import Worker  # noqa: E402
from shared.settings import WorkerTuning, load_settings  # noqa: E402
from tests.throttle import ThrottleProxy  # noqa: E402
from workers.clips import WORKER, command, process  # noqa: E402
from workers.clips.binaries import find_tools  # noqa: E402
from workers.clips.config import MIB, ClipsSettings  # noqa: E402
from workers.clips.models import Segment, plan_spans  # noqa: E402
from workers.clips.probe import Prober  # noqa: E402
from workers.clips.resources import CLIPS, CLIPS_TABLE, MEDIA  # noqa: E402
from workers.clips.stage import ClipsStage  # noqa: E402

CACHE = Path.home() / ".cache" / "fleet" / "clips"
TENANT, EPISODE = "bench", "long-episode"
SEGMENTS = [("00:04:59.600", "00:05:09.600"), ("00:14:31.250", "00:14:41.250"), ("00:27:10.520", "00:27:20.520")]


# --- the emulator --------------------------------------------------------------------------------------------


def serve_moto(port: int, stock: bool) -> None:
    """moto's server, with GETs served lazily from the stored object unless `stock`."""
    if not stock:
        _lazy_gets()
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", str(port)])


def _lazy_gets() -> None:
    from moto.s3 import models, responses

    local = threading.local()
    eager = models.FakeKey.value.fget  # type: ignore[attr-defined]

    class LazyBody:
        """A key's bytes as moto's responses use them (len, slice, iterate), read from its spool on demand."""

        def __init__(self, key: Any) -> None:
            self.key = key

        def __len__(self) -> int:
            return int(self.key.size)

        def __bool__(self) -> bool:
            return len(self) > 0

        def _read(self, start: int, length: int) -> bytes:
            with self.key.lock:
                self.key._value_buffer.seek(start)
                return bytes(self.key._value_buffer.read(length))

        def __getitem__(self, item: slice) -> bytes:
            start, stop, _ = item.indices(len(self))
            return self._read(start, max(0, stop - start))

        def __iter__(self) -> Any:
            for start in range(0, len(self), 4 * MIB):
                yield self._read(start, 4 * MIB)

    def value(key: Any) -> Any:
        return LazyBody(key) if getattr(local, "lazy", False) else eager(key)

    original = responses.S3Response.get_object

    def get_object(self: Any) -> Any:
        local.lazy = True
        try:
            return original(self)
        finally:
            local.lazy = False

    models.FakeKey.value = property(value, models.FakeKey.value.fset)  # type: ignore[attr-defined]
    responses.S3Response.get_object = get_object  # type: ignore[method-assign]


class Moto:
    def __init__(self, stock: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stock = stock
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Moto:
        argv = [sys.executable, __file__, "--serve-moto", str(self.port), *(["--stock-moto"] if self.stock else [])]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(self.url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_process(self.proc, grace=10)


# --- the source ------------------------------------------------------------------------------------------------


def ensure_source(ffmpeg: str, minutes: int, bitrate: str, console: Console) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / f"source-{minutes}min-720p-{bitrate}.mp4"
    if source.exists():
        return source
    console.print(f"generating the {minutes}-minute 720p source once (nice -n 10; cached at {source})…")
    started = time.monotonic()
    piece = CACHE / f"piece-60s-720p-{bitrate}.mp4"
    nice = ["nice", "-n", "10", ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(
        [
            *nice, "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:beep_factor=4", "-t", "60",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "50", "-keyint_min", "50",
            "-sc_threshold", "0", "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
            "-x264-params", "nal-hrd=cbr:force-cfr=1", "-c:a", "aac", "-b:a", "128k", "-ac", "2", str(piece),
        ],
        check=True,
    )  # fmt: skip
    listing = CACHE / "pieces.ffconcat"
    listing.write_text("ffconcat version 1.0\n" + f"file '{piece.name}'\n" * minutes)
    partial = source.with_suffix(".partial.mp4")
    subprocess.run(
        [*nice, "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", "-movflags", "+faststart",
         str(partial)],
        check=True,
    )  # fmt: skip
    partial.rename(source)
    piece.unlink()
    listing.unlink()
    console.print(f"  done in {time.monotonic() - started:.0f}s: {source.stat().st_size / 1e9:.2f} GB")
    return source


async def upload_source(s3: Any, bucket: str, key: str, path: Path) -> None:
    part = 64 * MIB
    upload = (await s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/mp4"))["UploadId"]
    parts = []
    with path.open("rb") as f:
        number = 1
        while chunk := await asyncio.to_thread(f.read, part):
            etag = (await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk))[
                "ETag"
            ]
            parts.append({"PartNumber": number, "ETag": etag})
            number += 1
    await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


# --- the two approaches -----------------------------------------------------------------------------------------


def begin_event(run: int) -> dict[str, Any]:
    segments = [{"startTime": a, "endTime": b} for a, b in SEGMENTS]
    clip = {"clipId": f"highlights-{run}", "segments": segments}
    detail = {"tenantId": TENANT, "episodeId": EPISODE, "clips": [clip]}
    return {"id": f"bench-{run}-{time.time_ns()}", "source": "bench", "detail-type": "Begin Clip Generation",
            "detail": detail}  # fmt: skip


async def fleet_worker(settings: Any, direct: Any, proxy: ThrottleProxy, run: int, preset: str) -> dict[str, Any]:
    """The clips worker through the throttled link; timed from the event to Generation Complete."""
    table = settings.name_of(CLIPS_TABLE)
    key = {"pk": {"S": f"{TENANT}#{EPISODE}"}, "sk": {"S": f"clip#highlights-{run}"}}
    async with open_services(settings) as services:
        stage = ClipsStage(services, config=ClipsSettings(preset=preset))
        tuning = WorkerTuning(concurrency=2, wait_time_seconds=1, burst_idle_seconds=0.5, visibility_timeout=120)
        worker = await Worker.create(stage, services, queue=CLIPS, tuning=tuning, burst=True)
        url = (await direct.sqs.get_queue_url(QueueName=settings.name_of(CLIPS)))["QueueUrl"]
        proxy.reset()
        started, sent_at = time.monotonic(), time.time()
        await direct.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(begin_event(run)))
        running = asyncio.create_task(worker.run())
        item: dict[str, Any] = {}
        while not running.done():
            item = (await direct.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)).get("Item", {})
            if item.get("status", {}).get("S") in ("Generation Complete", "Generation Failed"):
                break
            await asyncio.sleep(0.05)
        seconds, read = time.monotonic() - started, proxy.downstream_bytes
        await running
    if item.get("status", {}).get("S") != "Generation Complete":
        raise SystemExit(f"the worker did not complete the clip: {item.get('processingError')}")
    history = [h["M"] for h in item["statusHistory"]["L"]]
    begun, done = (datetime.fromisoformat(h["timestamp"]["S"].replace("Z", "+00:00")).timestamp() for h in history)
    return {
        "seconds": seconds,
        "bytes_read": read,
        "to_in_progress_seconds": begun - sent_at,  # the event, its fan-out, the clip job's SQS hop
        "in_progress_seconds": done - begun,  # probe, ffmpeg, upload, probe of the clip
        "clip_seconds": float(item["durationSeconds"]["N"]),
        "clip_bytes": int(item["fileSize"]["N"]),
    }


async def seed_approach(settings: Any, proxy: ThrottleProxy, workdir: Path, run: int, preset: str) -> dict[str, Any]:
    """Download the whole source, cut it locally with the same single ffmpeg pass, upload the clip."""
    tools = find_tools()
    bucket = settings.name_of(MEDIA)
    async with open_services(settings) as services:
        s3 = services.aws.s3
        proxy.reset()
        started = time.monotonic()
        local = workdir / "source.mp4"
        resp = await s3.get_object(Bucket=bucket, Key=f"videos/{EPISODE}/source.mp4")
        with local.open("wb") as f:
            async with resp["Body"] as body:
                async for chunk in body.iter_chunks(MIB):
                    await asyncio.to_thread(f.write, chunk)
        downloaded = time.monotonic() - started
        read = proxy.downstream_bytes
        options = {"protocol_whitelist": "file", "format_whitelist": "mov"}
        prober = Prober(None, timeout=60)
        prober.options = options
        info = await prober.probe(str(local))
        spans = plan_spans([Segment(startTime=a, endTime=b) for a, b in SEGMENTS], max_segments=20,
                           max_clip_seconds=600)  # fmt: skip
        durations = [s.duration_ms / 1000 for s in spans]
        fps = info.video.fps if info.video and info.video.fps else 25.0
        frames = command.frame_counts(durations, fps)
        cuts = [command.Cut(s.start_ms / 1000, d, n, fps) for s, d, n in zip(spans, durations, frames, strict=True)]
        args = command.reencode(tools.ffmpeg, str(local), cuts, video=True, audio=True,
                                encoding=command.Encoding(preset=preset), options=options)  # fmt: skip
        clip = await process.run([a for a in args if a not in ("-progress", command.PROGRESS)], time_limit=1800)
        await s3.put_object(Bucket=bucket, Key=f"{EPISODE}/clips/seed-{run}/clip.mp4", Body=clip)
        seconds = time.monotonic() - started
    local.unlink()
    return {"seconds": seconds, "bytes_read": read, "download_seconds": downloaded, "clip_bytes": len(clip)}


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    tools = find_tools()
    source = ensure_source(tools.ffmpeg, args.minutes, args.video_bitrate, console)
    size = source.stat().st_size
    registry = Registry.of([WORKER])
    with Moto(args.stock_moto) as moto, tempfile.TemporaryDirectory(prefix="fleet-bench-clips-") as tmp:
        direct_settings = load_settings(endpoint_url=moto.url, prefix="bench-", metrics_mode="off", health_dir=tmp)
        async with open_services(direct_settings) as direct:
            await Bootstrapper(direct.aws, registry).run()
            started = time.monotonic()
            bucket = direct_settings.name_of(MEDIA)
            await upload_source(direct.aws.s3, bucket, f"videos/{EPISODE}/source.mp4", source)
            console.print(f"source: {size / 1e9:.2f} GB uploaded to the emulator in {time.monotonic() - started:.0f}s")
            episode = {"pk": f"{TENANT}#{EPISODE}", "sk": "episode", "videoKey": f"videos/{EPISODE}/source.mp4"}
            await direct.aws.dynamodb.put_item(TableName=direct_settings.name_of(CLIPS_TABLE), Item=to_item(episode))
            fleet_runs, seed_runs = [], []
            with ThrottleProxy(moto.url, bytes_per_second=args.rate * 1e6) as proxy:
                linked = direct_settings.model_copy(update={"endpoint_url": proxy.url})
                for run in range(args.runs):
                    fleet_runs.append(await fleet_worker(linked, direct.aws, proxy, run, args.preset))
                    seed_runs.append(await seed_approach(linked, proxy, Path(tmp), run, args.preset))
    fleet_s = statistics.median(r["seconds"] for r in fleet_runs)
    seed_s = statistics.median(r["seconds"] for r in seed_runs)
    fleet_b = statistics.median(r["bytes_read"] for r in fleet_runs)
    seed_b = statistics.median(r["bytes_read"] for r in seed_runs)
    download_s = statistics.median(r["download_seconds"] for r in seed_runs)
    return {
        "source_bytes": size,
        "source_minutes": args.minutes,
        "clip_seconds": fleet_runs[0]["clip_seconds"],
        "link_mb_per_s": args.rate,
        "runs": args.runs,
        "stock_moto": args.stock_moto,
        "fleet_seconds": round(fleet_s, 2),
        "fleet_bytes_read": int(fleet_b),
        "fleet_read_fraction": round(fleet_b / size, 4),
        "seed_seconds": round(seed_s, 2),
        "seed_bytes_read": int(seed_b),
        "seed_download_seconds": round(download_s, 2),
        "seed_download_mb_per_s": round(seed_b / download_s / 1e6, 1),
        "seed_cut_and_upload_seconds": round(seed_s - download_s, 2),
        "preset": args.preset,
        "fleet_to_in_progress_seconds": round(statistics.median(r["to_in_progress_seconds"] for r in fleet_runs), 2),
        "fleet_in_progress_seconds": round(statistics.median(r["in_progress_seconds"] for r in fleet_runs), 2),
        "speedup": round(seed_s / fleet_s, 2),
        "targets_met": {"read_fraction_le_5pct": fleet_b / size <= 0.05, "speedup_ge_5x": seed_s / fleet_s >= 5},
    }


def report(figures: dict[str, Any], console: Console) -> None:
    table = Table("approach", "bytes read from S3", "share of source", "wall time", "speed-up")
    table.add_row(
        "seed: download whole, then cut",
        f"{figures['seed_bytes_read'] / 1e6:,.1f} MB",
        f"{figures['seed_bytes_read'] / figures['source_bytes']:.1%}",
        f"{figures['seed_seconds']:.1f} s (download {figures['seed_download_seconds']:.1f} s, "
        f"cut + upload {figures['seed_cut_and_upload_seconds']:.1f} s)",
        "1.0×",
    )
    table.add_row(
        "fleet clips worker: range reads",
        f"{figures['fleet_bytes_read'] / 1e6:,.1f} MB",
        f"{figures['fleet_read_fraction']:.1%}",
        f"{figures['fleet_seconds']:.1f} s (event → In Progress {figures['fleet_to_in_progress_seconds']:.1f} s, "
        f"→ Complete {figures['fleet_in_progress_seconds']:.1f} s)",
        f"{figures['speedup']:.1f}×",
    )
    console.print(
        f"source {figures['source_minutes']} min 720p, {figures['source_bytes'] / 1e9:.2f} GB; clip "
        f"{figures['clip_seconds']:.2f} s from 3 segments (x264 {figures['preset']}); link "
        f"{figures['link_mb_per_s']:g} MB/s; median of {figures['runs']} run(s)"
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="link bandwidth, MB/s (server → client)")
    parser.add_argument("--minutes", type=int, default=30, help="source length (≥ 30)")
    parser.add_argument("--video-bitrate", default="8M", help="source video bitrate (constant)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each approach (medians reported)")
    parser.add_argument("--preset", default=ClipsSettings().preset, help="libx264 preset of both renders")
    parser.add_argument("--stock-moto", action="store_true", help="moto as shipped (whole-object reads per GET)")
    parser.add_argument("--serve-moto", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_moto:
        serve_moto(args.serve_moto, args.stock_moto)
        return
    configure_logging("WARNING", "text")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    console = Console(width=150)
    figures = asyncio.run(bench(args, console))
    report(figures, console)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
