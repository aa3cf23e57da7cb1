"""A heartbeat file the container health check reads (`fleet health NAME` exits 0 or 1).

The worker rewrites it every few seconds from its event loop: a wedged loop, a dead process or a
receive loop that has stopped polling all turn the check red.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FAILED_POLLS = 3  # consecutive failed polls that turn the check red


@dataclass
class HealthState:
    worker: str
    pid: int
    status: str  # starting | running | draining | stopped
    in_flight: int
    processed: int
    failed: int
    last_poll: float
    updated: float
    poll_budget: float  # seconds a poll may legitimately take
    poll_failures: int = 0  # consecutive failed polls
    last_error: str = ""


def health_path(directory: str, worker: str) -> Path:
    return Path(directory) / f"{worker}.json"


def write_health(directory: str, state: HealthState) -> None:
    path = health_path(directory, state.worker)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{state.worker}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(state), fh)
    os.replace(tmp, path)  # atomic: the checker never reads half a file


def check_health(directory: str, worker: str, *, max_age: float = 30.0, now: float | None = None) -> tuple[bool, str]:
    path = health_path(directory, worker)
    try:
        state = HealthState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return False, f"no heartbeat at {path}"
    except (ValueError, TypeError) as exc:
        return False, f"unreadable heartbeat {path}: {exc}"
    now = time.time() if now is None else now
    if state.status == "stopped":
        return False, "worker has stopped"
    if now - state.updated > max_age:
        return (
            False,
            f"heartbeat is {now - state.updated:.0f}s old (max {max_age:.0f}s): event loop stuck or dead",
        )
    if state.status == "running" and state.poll_failures >= FAILED_POLLS:
        return False, f"the last {state.poll_failures} polls failed: {state.last_error}"
    if state.status == "running" and now - state.last_poll > state.poll_budget + max_age:
        return False, f"no receive for {now - state.last_poll:.0f}s while not saturated"
    return (
        True,
        f"{state.status}: {state.in_flight} in flight, {state.processed} processed, {state.failed} failed",
    )
