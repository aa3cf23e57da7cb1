"""`fleet submit ingest PATH... [--date YYYY-MM-DD]`: upload local NDJSON files to the landing bucket.

Files land at `incoming/<date>/<job_id>/<name>`: the date folder sets their manifest's date prefix, the
job folder keeps two submissions of a same-named file from overwriting each other. The bucket's
notifications (wired by `fleet bootstrap`) bring them to the ingest worker; nothing is queued here.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.jobs import new_job_id
from shared.stage import Services
from workers.ingest.config import IngestConfig
from workers.ingest.layout import check_date
from workers.ingest.resources import LANDING
from workers.ingest.s3io import upload_file

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 200


def safe_name(name: str) -> str:
    """A local file name reduced to characters that are safe in any S3 tool and never a path."""
    cleaned = UNSAFE.sub("_", name).lstrip(".")[:MAX_NAME]
    return cleaned or "file.ndjson"


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def date_arg(value: str) -> str:
    try:
        return check_date(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def upload_files(
    services: Services, paths: list[Path], date_prefix: str, *, job_id: str | None = None
) -> tuple[str, list[str]]:
    """Upload `paths` as one job; returns the job id and the keys written."""
    check_date(date_prefix)
    job_id = job_id or new_job_id()
    prefix = f"{IngestConfig().landing_prefix}{date_prefix}/{job_id}/"
    keys: list[str] = []
    seen: set[str] = set()
    for path in paths:
        name = safe_name(path.name)
        stem, dot, ext = name.rpartition(".")
        n = 1
        while name in seen:
            n += 1
            name = f"{stem}-{n}.{ext}" if dot else f"{ext}-{n}"
        seen.add(name)
        keys.append(prefix + name)
    await services.jobs.create(
        job_id,
        "ingest",
        {"date_prefix": date_prefix, "files": len(keys), "prefix": prefix},
        # The upload is done when its files are: `children` maps each manifest (a job of its own) to how many
        # of the `units` files it holds; ingest links them as it builds the manifests.
        fields={"children": {}, "units": len(keys)},
    )
    landing = services.settings.name_of(LANDING)
    total = 0
    for path, key in zip(paths, keys, strict=True):
        total += await upload_file(services.aws.s3, landing, key, path, content_type="application/x-ndjson")
    await services.jobs.record_stage(job_id, "submit", "UPLOADED", files=len(keys), bytes=total)
    return job_id, keys


async def submit(args: argparse.Namespace, services: Services) -> str:
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"fleet: not a file: {', '.join(missing)}")
    job_id, _ = await upload_files(services, paths, args.date or today())
    return job_id


def register(kinds: Any) -> None:
    p = kinds.add_parser("ingest", help="upload local NDJSON files to the landing bucket")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NDJSON files")
    p.add_argument("--date", type=date_arg, help="date folder (YYYY-MM-DD; default: today, UTC)")
    p.set_defaults(submit=submit)
