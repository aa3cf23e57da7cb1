"""`fleet submit clips --tenant T --episode E [--clips FILE|-] [--via-bus]`.

By default the Begin Clip Generation event goes straight onto `fleet-clips`, in the envelope EventBridge
delivers, tagged with a job id, so `fleet status ID` shows the fan-out and every clip. `--via-bus` puts it
on the default event bus instead, as a producer would (EventBridge carries no job id: the event id is
printed).
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
from shared.jobs import new_job_id
from shared.stage import Services, validate
from workers.clips.models import BeginClipGeneration
from workers.clips.resources import CLIPS

DETAIL_TYPE = "Begin Clip Generation"
SOURCE = "fleet.cli"


def _read(source: str) -> str:
    return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")


async def submit(args: argparse.Namespace, services: Services) -> str:
    detail: dict[str, Any] = {"tenantId": args.tenant, "episodeId": args.episode}
    if args.clips:
        try:
            detail["clips"] = json.loads(await asyncio.to_thread(_read, args.clips))
        except OSError as exc:
            raise SystemExit(f"fleet: cannot read {args.clips}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"fleet: {args.clips} is not JSON: {exc}") from None
    job_id = new_job_id()
    event = {"id": job_id, "source": SOURCE, "detail-type": DETAIL_TYPE, "detail": detail}
    try:
        validate(BeginClipGeneration, event)
    except Poison as exc:
        raise SystemExit(f"fleet: not a valid Begin Clip Generation event: {exc.reason}") from None
    if args.via_bus:
        resp = await services.aws.events.put_events(
            Entries=[{"Source": SOURCE, "DetailType": DETAIL_TYPE, "Detail": json.dumps(detail)}]
        )
        entry = resp["Entries"][0]
        if resp.get("FailedEntryCount") or "EventId" not in entry:
            raise SystemExit(f"fleet: EventBridge refused the event: {entry.get('ErrorMessage', entry)}")
        return entry["EventId"]
    return await send_job(
        services, CLIPS, event, kind="clips", job_id=job_id, detail={"tenant": args.tenant, "episode": args.episode}
    )


def register(kinds: Any) -> None:
    p = kinds.add_parser("clips", help="a Begin Clip Generation event for the clips worker")
    p.add_argument("--tenant", required=True, help="tenantId")
    p.add_argument("--episode", required=True, help="episodeId (its episode item holds videoKey)")
    p.add_argument(
        "--clips",
        metavar="FILE",
        help='JSON list of {"clipId", "segments": [...]} (- for stdin); '
        "default: the episode's clip items in fleet-clips",
    )
    p.add_argument("--via-bus", action="store_true", help="put the event on the default EventBridge bus")
    p.set_defaults(submit=submit)
