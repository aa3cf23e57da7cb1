"""HTTP → S3 streaming: the download worker next to a naive download-to-disk-then-`upload_file`.

The provider server (a subprocess) serves 1 GiB and 4 GiB items through a link throttled to `--rate`
(50 MB/s by default: a camera cloud, not S3, is what limits a real transfer), so the floor of any transfer
is size ÷ link speed. Each variant runs in its own process against one embedded moto server (a separate
process), one after the other:

- `worker`: `DownloadStage` under the runtime (`Worker`, burst mode), part size × parts in flight from
  `--part-mib` × `--parts`; wall time from the message's start to COMPLETED;
- `naive`: httpx streams the body to a temporary file, then boto3's `upload_file` (s3transfer's defaults)
  sends it; wall time from the first request to the end of the upload.

Peak RSS is each process's `ru_maxrss` minus its RSS right before the transfer (imports and clients are
not the transfer's). Targets: the worker's RSS growth flat across sizes and within part size × parts in
flight + 64 MiB; its wall time within 1.1× the floor (upload fully overlapped with download). Digests are
checked against the provider's deterministic bytes after the runs.

    nice -n 10 .venv/bin/python bench/stream.py [--sizes 1GiB,4GiB] [--rate 50MB/s] [--part-mib 16] [--parts 4]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.emulator import EmbeddedAws
from shared.logs import configure_logging
from shared.registry import discover
from shared.runtime import Worker
from shared.settings import WorkerTuning, load_settings
from workers.finalizer.resources import MEDIA
from workers.media_sync.app import MediaSync
from workers.media_sync.config import MediaSyncSettings, MiB
from workers.media_sync.download_stage import DownloadStage
from workers.media_sync.provider.command import parse_rate, parse_size
from workers.media_sync.provider.content import sha256_of
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import DOWNLOAD_QUEUE, PROVIDER_SECRET, SYNC_TABLE
from workers.media_sync.store import SyncStore

ACCESS_TOKEN = "bench-access-token-0001"
CLIENT_SECRET = "bench-client-secret"
GiB = 1024 * MiB


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Captured(logging.Handler):
    """Keeps the fields of one log event (the stage's own timings)."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event
        self.fields: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.event:
            self.fields = dict(record.__dict__)

    def extra(self, name: str) -> Any:
        return self.fields.get(name)


# --- children: one transfer each ---------------------------------------------------------------------


async def child_worker(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(endpoint_url=args.endpoint, prefix=args.prefix, metrics_mode="off")
    config = MediaSyncSettings(
        provider_url=args.provider,
        allow_loopback_http=True,
        part_size=args.part_mib * MiB,
        parts_in_flight=args.parts,
        multipart_threshold=args.part_mib * MiB,
        max_object_bytes=64 * GiB,
    )
    tuning = WorkerTuning(concurrency=1, wait_time_seconds=1, visibility_timeout=60, burst_idle_seconds=0.5)
    async with open_services(settings, pool_size=tuning.pool_size) as services:
        stage = DownloadStage(services, MediaSync(services, config))
        sqs = services.aws.sqs
        url = (await sqs.get_queue_url(QueueName=settings.name_of(DOWNLOAD_QUEUE)))["QueueUrl"]
        before, cpu_before = rss_now(), cpu_seconds()
        await sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"media_id": args.media_id, "filename": "bench.mp4", "size": args.size}),
        )
        started = time.monotonic()
        worker = await Worker.create(stage, services, queue=DOWNLOAD_QUEUE, tuning=tuning, burst=True)
        handled: list[float] = []
        original = stage.handle

        async def timed(job: Any, ctx: Any) -> None:
            t0 = time.monotonic()
            await original(job, ctx)
            handled.append(time.monotonic() - t0)

        stage.handle = timed  # type: ignore[method-assign]
        completes: list[float] = []
        complete = stage.target.complete

        async def timed_complete(*a: Any) -> None:
            t0 = time.monotonic()
            await complete(*a)
            completes.append(time.monotonic() - t0)

        stage.target.complete = timed_complete  # type: ignore[method-assign]
        synced = Captured("media synced")
        logging.getLogger("fleet.media_sync").addHandler(synced)
        logging.getLogger("fleet.media_sync").setLevel(logging.INFO)
        stats = await worker.run()
        record = await SyncStore(services.aws.dynamodb, settings.name_of(SYNC_TABLE)).get(args.media_id) or {}
    return {
        "wall": handled[0] if handled else time.monotonic() - started,
        "rss_before": before,
        "rss_peak": peak_rss(),
        "cpu": cpu_seconds() - cpu_before,
        "succeeded": stats.succeeded,
        "complete_s": sum(completes),
        "download_s": synced.extra("download_s"),
        "waited_for_s3_s": synced.extra("waited_for_s3_s"),
        "status": record.get("status"),
        "sha256": record.get("sha256"),
        "bytes": record.get("bytes"),
    }


def child_naive(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    import httpx

    before, cpu_before = rss_now(), cpu_seconds()
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(prefix="fleet-bench-", suffix=".mp4") as tmp:
        headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
        with (
            httpx.Client(timeout=60, follow_redirects=True) as http,
            http.stream("GET", f"{args.provider}/media/{args.media_id}/download", headers=headers) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_raw(1024 * 1024):
                tmp.write(chunk)
        tmp.flush()
        downloaded = time.monotonic() - started
        s3 = boto3.client(
            "s3",
            endpoint_url=args.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.upload_file(tmp.name, args.bucket, "naive/bench.mp4")
        size = os.path.getsize(tmp.name)
    return {
        "wall": time.monotonic() - started,
        "download": downloaded,
        "rss_before": before,
        "rss_peak": peak_rss(),
        "cpu": cpu_seconds() - cpu_before,
        "bytes": size,
    }


def run_child(kind: str, common: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    if os.environ.get("BENCH_LOG_LEVEL"):
        print(proc.stderr[-3000:], file=sys.stderr)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- parent ----------------------------------------------------------------------------------------


async def prepare(endpoint: str, prefix: str) -> str:
    settings = load_settings(endpoint_url=endpoint, prefix=prefix, metrics_mode="off")
    async with open_services(settings) as services:
        await Bootstrapper(services.aws, discover()).run()
        creds = {
            "client_id": "fleet-demo",
            "client_secret": CLIENT_SECRET,
            "access_token": ACCESS_TOKEN,
            "refresh_token": "bench-refresh",
            "expires_at": (datetime.now(UTC) + timedelta(days=7)).isoformat(timespec="seconds"),
        }
        await services.aws.secretsmanager.put_secret_value(
            SecretId=settings.name_of(PROVIDER_SECRET), SecretString=json.dumps(creds)
        )
    return settings.name_of(MEDIA)


async def clean(endpoint: str, prefix: str, bucket: str) -> None:
    """Free the emulator's memory between runs (moto keeps objects in memory and temp files)."""
    settings = load_settings(endpoint_url=endpoint, prefix=prefix, metrics_mode="off")
    async with open_services(settings) as services:
        listed = await services.aws.s3.list_objects_v2(Bucket=bucket)
        for obj in listed.get("Contents", []):
            await services.aws.s3.delete_object(Bucket=bucket, Key=obj["Key"])


def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("WARNING", "text")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rate = parse_rate(args.rate)
    budget = args.part_mib * MiB * args.parts
    rows: list[dict[str, Any]] = []
    prefix = f"bench{int(time.time()) % 100000}-"
    with EmbeddedAws(mode="process") as aws, ProviderProcess("--client-secret", CLIENT_SECRET) as provider:
        bucket = asyncio.run(prepare(aws.url, prefix))
        for size in sizes:
            media_id = f"b{size // MiB}m"
            provider.reset(
                library=[{"id": media_id, "filename": "bench.mp4", "size": size}],
                access_token=ACCESS_TOKEN,
                access_expires_in=86400,
                knobs={"rate": rate},
            )
            common = [
                *("--endpoint", aws.url, "--provider", provider.url, "--prefix", prefix, "--bucket", bucket),
                *("--media-id", media_id, "--size", str(size), "--part-mib", str(args.part_mib)),
                *("--parts", str(args.parts)),
            ]
            for kind in args.variants.split(","):
                result = run_child(kind, common)
                floor = size / rate
                growth = result["rss_peak"] - result["rss_before"]
                row = {
                    "variant": kind,
                    "size": size,
                    "wall": round(result["wall"], 2),
                    "floor": round(floor, 2),
                    "wall_over_floor": round(result["wall"] / floor, 3),
                    "rss_peak_mib": round(result["rss_peak"] / MiB, 1),
                    "rss_growth_mib": round(growth / MiB, 1),
                    "cpu_s": round(result["cpu"], 1),
                    "bytes": result.get("bytes"),
                }
                if kind == "worker":
                    row["sha256_ok"] = result.get("sha256") == sha256_of(media_id, 1, size)
                    row["status"] = result.get("status")
                    row["download_s"] = result.get("download_s")
                    row["waited_for_s3_s"] = result.get("waited_for_s3_s")
                    row["complete_s"] = round(result["complete_s"], 2)
                    row["wall_excl_complete_over_floor"] = round((result["wall"] - result["complete_s"]) / floor, 3)
                else:
                    row["download_s"] = round(result["download"], 2)
                rows.append(row)
                print_row(row)
                asyncio.run(clean(aws.url, prefix, bucket))
    return report(rows, budget)


def print_row(row: dict[str, Any]) -> None:
    if not getattr(print_row, "header", False):
        head = f"{'variant':<8}{'size':>8}{'wall s':>9}{'floor s':>9}{'wall/floor':>11}{'peak RSS':>10}"
        print(f"{head}{'RSS growth':>12}  notes")
        print_row.header = True  # type: ignore[attr-defined]
    if row["variant"] == "worker":
        notes = (
            f"sha256 {'ok' if row.get('sha256_ok') else 'WRONG'}; last byte at {row['download_s']} s, waited for S3 "
            f"{row['waited_for_s3_s']} s; CompleteMultipartUpload {row['complete_s']} s, "
            f"without it {row['wall_excl_complete_over_floor']}x"
        )
    else:
        notes = f"download alone {row['download_s']} s, then upload_file"
    print(
        f"{row['variant']:<8}{row['size'] / GiB:>6.2g}Gi{row['wall']:>9.1f}{row['floor']:>9.1f}"
        f"{row['wall_over_floor']:>11.3f}{row['rss_peak_mib']:>8.0f}Mi{row['rss_growth_mib']:>10.0f}Mi  {notes}",
        flush=True,
    )


def report(rows: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    worker = [r for r in rows if r["variant"] == "worker"]
    limit = (budget + 64 * MiB) / MiB
    growths = [r["rss_growth_mib"] for r in worker]
    ratios = [r["wall_over_floor"] for r in worker]
    streaming = [r["wall_excl_complete_over_floor"] for r in worker]
    out: dict[str, Any] = {
        "rows": rows,
        "memory_budget_mib": round(budget / MiB),
        "rss_limit_mib": limit,
        "worker_rss_within_limit": all(g <= limit for g in growths),
        "worker_rss_spread_mib": round(max(growths) - min(growths), 1) if growths else None,
        "worker_max_wall_over_floor": max(ratios) if ratios else None,
        "worker_within_1_1x": all(r <= 1.1 for r in ratios),
        "worker_max_wall_excl_complete_over_floor": max(streaming) if streaming else None,
        "naive_over_worker": [
            round(n["wall"] / w["wall"], 2)
            for w in worker
            for n in rows
            if n["variant"] == "naive" and n["size"] == w["size"]
        ],
    }
    print(
        f"worker RSS growth {', '.join(f'{g:.0f}' for g in growths)} MiB (limit {limit:.0f} MiB = part x in flight "
        f"+ 64 MiB; spread {out['worker_rss_spread_mib']} MiB); worker wall/floor max "
        f"{out['worker_max_wall_over_floor']} (target <= 1.1), {out['worker_max_wall_excl_complete_over_floor']} "
        f"without the emulator's CompleteMultipartUpload; naive / worker wall {out['naive_over_worker']}"
    )
    return out


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1GiB,4GiB")
    parser.add_argument("--rate", default="50MB/s", help="the provider's link speed")
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--parts", type=int, default=4, help="parts in flight")
    parser.add_argument("--variants", default="worker,naive")
    # child mode (internal)
    parser.add_argument("--child", choices=["worker", "naive"], help=argparse.SUPPRESS)
    for name in ("--endpoint", "--provider", "--prefix", "--bucket", "--media-id"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    parsed = parse()
    if parsed.child == "worker":
        configure_logging(os.environ.get("BENCH_LOG_LEVEL") or "WARNING", "text")
        print(json.dumps(asyncio.run(child_worker(parsed))))
    elif parsed.child == "naive":
        print(json.dumps(child_naive(parsed)))
    else:
        print(json.dumps(main(parsed)))
