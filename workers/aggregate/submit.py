"""`fleet submit events FILE.ndjson`: validate every line, then put the events on the stream, with progress.

A file with invalid lines is refused whole, each bad line named (nothing is sent), unless `--skip-invalid`.
Each event's partition key is its first entity (student, else tutor, else subject), so an entity's events
keep their order and a file submitted twice puts each event on the shard its first copy went to.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from shared.errors import Poison
from shared.settings import load_stage_settings
from shared.stage import Services
from workers.aggregate.config import AggregateConfig
from workers.aggregate.events import parse_event, partition_key
from workers.aggregate.producer import put_records
from workers.aggregate.resources import EVENTS_STREAM

SHOWN_ERRORS = 20


def read_events(lines: list[str], config: AggregateConfig) -> tuple[list[Any], list[tuple[int, str]]]:
    """(records to put, (line number, reason) for each invalid line)."""
    records, errors = [], []
    now = time.time()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = parse_event(line, now=now, max_future_seconds=config.max_future_seconds)
        except Poison as exc:
            errors.append((number, exc.reason))
            continue
        records.append({"Data": line.strip().encode(), "PartitionKey": partition_key(event)})
    return records, errors


async def submit_events(
    services: Services, lines: list[str], *, skip_invalid: bool = False, quiet: bool = False
) -> tuple[int, list[tuple[int, str]]]:
    """Put the valid events of `lines` on the stream; returns (events put, invalid lines)."""
    records, errors = read_events(lines, load_stage_settings(AggregateConfig))
    if errors and not skip_invalid:
        return 0, errors
    stream = services.settings.name_of(EVENTS_STREAM)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if not quiet:
            print(f"\rput {done}/{len(records)} events on {stream}", end="", file=sys.stderr, flush=True)

    await put_records(services.aws.kinesis, stream, records, progress=progress)
    if not quiet and records:
        print(file=sys.stderr)
    return len(records), errors


def read_lines(name: str) -> list[str]:
    if name == "-":
        return sys.stdin.read().splitlines()
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"fleet: not a file: {name}")
    return path.read_text().splitlines()


async def submit(args: argparse.Namespace, services: Services) -> str:
    lines = read_lines(args.path)
    put, errors = await submit_events(services, lines, skip_invalid=args.skip_invalid)
    for number, reason in errors[:SHOWN_ERRORS]:
        print(f"{args.path}:{number}: {reason}", file=sys.stderr)
    if len(errors) > SHOWN_ERRORS:
        print(f"... and {len(errors) - SHOWN_ERRORS} more invalid lines", file=sys.stderr)
    if errors and not args.skip_invalid:
        raise SystemExit(f"fleet: {len(errors)} invalid lines: nothing sent (--skip-invalid sends the rest)")
    skipped = f", {len(errors)} invalid lines skipped" if errors else ""
    return f"{put} events put on {services.settings.name_of(EVENTS_STREAM)}{skipped}"


def register(kinds: Any) -> None:
    p = kinds.add_parser("events", help="put the events of an NDJSON file (seed 004's format) on the stream")
    p.add_argument("path", metavar="FILE.ndjson", help="one event per line; - reads stdin")
    p.add_argument("--skip-invalid", action="store_true", help="send the valid lines of a file with invalid ones")
    p.set_defaults(submit=submit)
