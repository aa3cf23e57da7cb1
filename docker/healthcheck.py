#!/usr/bin/env python3
"""The image's HEALTHCHECK: is the worker this container runs healthy?

The worker is read from the running process (`fleet worker NAME`, wherever fleet sits in its command
line), never from a variable that may name another one: `docker run fleet worker ingest` is checked for
ingest, `worker media-sync` for each worker of that group. Each must have a fresh heartbeat
(`fleet health NAME`); with no `fleet worker` process at all, the container is unhealthy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def worker_of(argv: Sequence[str]) -> str | None:
    """`[..., .../fleet, "worker", NAME, ...]` -> NAME."""
    for i, arg in enumerate(argv[:-2]):
        if os.path.basename(arg) == "fleet" and argv[i + 1] == "worker" and not argv[i + 2].startswith("-"):
            return argv[i + 2]
    return None


def running_workers(proc: Path = Path("/proc")) -> list[str]:
    """The names given to every `fleet worker` process visible here (tini's command line too)."""
    names = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:  # the process ended while we looked
            continue
        name = worker_of([part.decode(errors="replace") for part in raw.split(b"\0") if part])
        if name:
            names.add(name)
    return sorted(names)


def main(proc: Path = Path("/proc")) -> int:
    names = running_workers(proc)
    if not names:
        print("unhealthy — no `fleet worker` process is running")
        return 1
    from shared.health import check_health
    from shared.registry import discover
    from shared.settings import load_settings

    settings = load_settings()
    healthy = True
    for spec in discover().expand(names):
        ok, detail = check_health(settings.health_dir, spec.name)
        print(f"{spec.name}: {'healthy' if ok else 'unhealthy'} — {detail}")
        healthy = healthy and ok
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
