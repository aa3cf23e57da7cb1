"""The provider server as a command: `fleet media-provider ...` and `python -m workers.media_sync.provider`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from typing import Any

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.I)
UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """`4GiB`, `64MiB`, `50MB`, `1000` -> bytes."""
    match = SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB, 4GiB, 50MB)")
    return int(float(match.group(1)) * UNITS[(match.group(2) or "").lower()])


def parse_rate(text: str) -> float:
    return float(parse_size(text.removesuffix("/s")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on the first line)")
    p.add_argument("--items", type=int, default=20, help="media items in the library")
    p.add_argument("--size", type=parse_size, default=parse_size("8MiB"), help="size of each item (e.g. 4GiB)")
    p.add_argument("--rate", type=parse_rate, default=None, help="link speed for downloads, e.g. 50MB/s")
    p.add_argument("--client-id", default="fleet-demo")
    p.add_argument("--client-secret", default="demo-client-secret")
    p.add_argument("--refresh-token", default="demo-refresh-token", help="the refresh token it accepts first")
    p.add_argument("--access-token", default=None, help="an access token it accepts for an hour")
    p.add_argument("--no-redirects", action="store_true", help="serve bytes at /media/{id}/download directly")


async def run(args: argparse.Namespace) -> int:
    from workers.media_sync.provider.server import Provider, library_of, serve

    provider = Provider(client_id=args.client_id, client_secret=args.client_secret)
    state: dict[str, Any] = {
        "library": library_of(args.items, args.size),
        "refresh_token": args.refresh_token,
        "knobs": {"rate": args.rate, "redirects": not args.no_redirects},
    }
    if args.access_token:
        state["access_token"] = args.access_token
    provider.reset(state)
    runner, url = await serve(provider, args.host, args.port)
    # The first line is machine-readable: whoever started us (tests, the demo) learns the port from it.
    print(json.dumps({"url": url}), flush=True)
    print(f"media provider listening on {url} ({args.items} items of {args.size} bytes)", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="media-provider", description=__doc__)
    add_arguments(parser)
    return asyncio.run(run(parser.parse_args(argv)))


def register(sub: Any) -> None:
    """`fleet media-provider`: the provider server, for local runs of the media-sync workers."""
    p = sub.add_parser("media-provider", help="run the media provider server (OAuth, paging, Range downloads)")
    add_arguments(p)
    p.set_defaults(func=lambda args: asyncio.run(run(args)))
