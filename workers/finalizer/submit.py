"""`fleet submit finalize FILE|-`: put a final event (seeds/000 §3 JSON) on fleet-finalize.

The job id is the event's execution_id, so `fleet status <execution_id>` follows the job. The event is
validated first: a malformed one is refused here rather than dead-lettered later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from shared.app import send_job
from shared.errors import Poison
from shared.stage import Services, parse_body
from workers.finalizer.models import FinalEvent
from workers.finalizer.resources import FINALIZE


def _read(source: str) -> str:
    return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")


async def submit(args: argparse.Namespace, services: Services) -> str:
    try:
        text = await asyncio.to_thread(_read, args.file)
    except OSError as exc:
        raise SystemExit(f"fleet: cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        event = parse_body(FinalEvent, text)
    except Poison as exc:
        raise SystemExit(f"fleet: not a valid final event: {exc.reason}") from None
    detail = {k: v for k, v in (("video_key", event.video_key), ("bucket", event.bucket)) if v}
    # The body goes on as written: the worker validates it again, exactly as for any other producer.
    return await send_job(
        services,
        FINALIZE,
        json.loads(text),
        kind="finalize",
        job_id=event.execution_id,
        detail=detail,
    )


def register(kinds: Any) -> None:
    p = kinds.add_parser("finalize", help="a final event (JSON) for the finalizer worker")
    p.add_argument("file", help="path to the event JSON, or - for stdin")
    p.set_defaults(submit=submit)
