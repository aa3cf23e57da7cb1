"""`fleet submit sync`: start a library sync (as a schedule would)."""

from __future__ import annotations

import argparse
from typing import Any

from shared.app import send_job
from shared.stage import Services
from workers.media_sync.resources import SYNC_QUEUE


async def submit(args: argparse.Namespace, services: Services) -> str:
    return await send_job(services, SYNC_QUEUE, {"action": "sync"}, kind="sync", terminal="sync")


def register(kinds: Any) -> None:
    p = kinds.add_parser("sync", help="sync the media provider's library into S3 (media-sync)")
    p.set_defaults(submit=submit)
