"""`fleet demo` step: NDJSON files with mixed schemas and a few bad lines → ingest → compact → Parquet."""

from __future__ import annotations

import contextlib
import io
import json
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from shared.app import open_services, run_workers
from shared.emulator import temporary_env
from shared.settings import FleetSettings
from workers.ingest.layout import Manifest
from workers.ingest.resources import LAKE, LANDING
from workers.ingest.submit import upload_files


def ingest_env(**values: object) -> contextlib.AbstractContextManager[None]:
    """Set FLEET_INGEST_* for the stages `run_workers` builds in this process, then restore."""
    return temporary_env({f"FLEET_INGEST_{k.upper()}": str(v) for k, v in values.items()})


def write_files(directory: Path, rng: random.Random) -> dict[str, list[Path]]:
    """Two days of files: sessions (ints, floats, nested tags/meta) and sensor readings."""
    out: dict[str, list[Path]] = {"sessions": [], "sensors": []}
    for n in range(8):
        lines = []
        for i in range(50):
            row: dict[str, Any] = {"event_id": f"s{n}-{i}", "user": f"u{rng.randint(1, 40)}"}
            row["amount"] = rng.randint(1, 500) if n % 2 else round(rng.uniform(1, 500), 2)
            if n % 3 == 0:
                row["tags"] = rng.sample(["new", "vip", "trial", "mobile"], 2)
            if n % 4 == 1:
                row["meta"] = {"device": rng.choice(["ios", "android", "web"]), "v": rng.randint(1, 9)}
            lines.append(json.dumps(row))
        if n in (2, 5):
            lines.insert(10, '{"event_id": "broken", ')  # truncated JSON
        path = directory / f"sessions-{n}.ndjson"
        path.write_text("\n".join(lines) + "\n")
        out["sessions"].append(path)
    for n in range(4):
        lines = [
            json.dumps({"sensor": f"t{n}", "reading": round(rng.gauss(20, 3), 2), "ok": rng.random() > 0.1})
            for _ in range(30)
        ]
        if n == 3:
            lines += ["not json at all", "[1, 2, 3]"]
        path = directory / f"sensors-{n}.ndjson"
        path.write_text("\n".join(lines) + "\n")
        out["sensors"].append(path)
    return out


async def demo(settings: FleetSettings, console: Console) -> None:
    today = datetime.now(UTC).date()
    dates = {"sessions": today.isoformat(), "sensors": (today - timedelta(days=1)).isoformat()}
    with tempfile.TemporaryDirectory(prefix="fleet-ingest-demo-") as tmp:
        files = write_files(Path(tmp), random.Random(7))
        async with open_services(settings) as services:
            jobs = {}
            for kind, paths in files.items():
                job_id, _ = await upload_files(services, paths, dates[kind])
                jobs[job_id] = len(paths)
    uploaded = sum(jobs.values())
    console.print(f"uploaded {uploaded} NDJSON files to {settings.name_of(LANDING)}/incoming/ ({len(jobs)} jobs)")

    # A short max wait so the partial batches (12 files, not 200) flush within seconds; compact stays
    # up long enough to receive them.
    tuned = settings.model_copy(
        update={"workers": {**settings.workers, "compact": {"burst_idle_seconds": 4, "wait_time_seconds": 2}}}
    )
    with ingest_env(max_wait_seconds=1, tick_seconds=0.25, lease_seconds=10):
        stats = await run_workers(tuned, ["ingest", "compact"], burst=True)
    console.print(f"ingest: {stats['ingest'].succeeded} notifications; compact: {stats['compact'].succeeded} manifests")

    async with open_services(settings) as services:
        s3 = services.aws.s3
        lake = settings.name_of(LAKE)
        per_manifest = Table("manifest", "date", "files", "rows", "columns", "quarantined lines")
        totals = {"manifests": 0, "rows": 0, "quarantined": 0}
        for date_prefix in sorted(set(dates.values())):
            listed = await s3.list_objects_v2(Bucket=lake, Prefix=f"manifests/{date_prefix}/")
            for obj in listed.get("Contents", []):
                raw = await (await s3.get_object(Bucket=lake, Key=obj["Key"]))["Body"].read()
                manifest = Manifest.model_validate(json.loads(raw))
                if not any(job in f.key for f in manifest.files for job in jobs):
                    continue  # another run's manifest
                mid = manifest.manifest_id
                data = await (await s3.get_object(Bucket=lake, Key=f"parquet/date={date_prefix}/{mid}.parquet"))[
                    "Body"
                ].read()
                table = pq.read_table(io.BytesIO(data))
                quarantined = 0
                with contextlib.suppress(s3.exceptions.NoSuchKey):
                    bad = await (await s3.get_object(Bucket=lake, Key=f"quarantine/{mid}.ndjson"))["Body"].read()
                    quarantined = len(bad.splitlines())
                per_manifest.add_row(
                    mid[:8],
                    date_prefix,
                    str(len(manifest.files)),
                    str(table.num_rows),
                    ", ".join(f"{f.name}:{f.type}" for f in table.schema if not f.name.startswith("_fleet")),
                    str(quarantined),
                )
                totals["manifests"] += 1
                totals["rows"] += table.num_rows
                totals["quarantined"] += quarantined
        console.print(per_manifest)
        summary = Table("files", "manifests", "rows", "quarantined lines")
        summary.add_row(str(uploaded), str(totals["manifests"]), str(totals["rows"]), str(totals["quarantined"]))
        console.print(summary)
