"""`fleet submit echo TEXT [--sleep S] [--fail retry|fatal]`."""

from __future__ import annotations

import argparse
from typing import Any

from shared.app import send_job
from shared.stage import Services
from workers.echo import ECHO


async def submit(args: argparse.Namespace, services: Services) -> str:
    body: dict[str, Any] = {"text": args.text, "sleep": args.sleep}
    if args.fail:
        body["fail"] = args.fail
    return await send_job(services, ECHO, body, kind="echo", detail={"chars": len(args.text)}, terminal="echo")


def register(kinds: Any) -> None:
    p = kinds.add_parser("echo", help="a message for the echo worker")
    p.add_argument("text")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds the handler works")
    p.add_argument("--fail", choices=["retry", "fatal"], help="make the handler fail")
    p.set_defaults(submit=submit)
