"""A heartbeat file the container health check reads (`fleet health NAME` exits 0 or 1).

The worker rewrites it every few seconds from its event loop: a wedged loop, a dead process or a
receive loop that has stopped polling all turn the check red.
"""

from __future__ import annotations

import glob
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
    """The worker's heartbeat, and those of its other consumers (`<worker>.<part>.json`, e.g. a worker's stream
    consumer next to its queue consumer): healthy only if every one is."""
    main = health_path(directory, worker)
    parts = sorted(Path(directory).glob(f"{glob.escape(worker)}.*.json"))
    paths = [main, *parts] if main.exists() or not parts else parts  # a stream-only worker has no main file
    results = [_check_one(path, max_age=max_age, now=now) for path in paths]
    failed = [(path, detail) for path, (ok, detail) in zip(paths, results, strict=True) if not ok]
    if failed:
        path, detail = failed[0]
        return False, detail if path == main else f"{path.stem}: {detail}"
    if len(results) == 1:
        return results[0]
    return True, "; ".join(f"{p.stem}: {d}" for p, (_, d) in zip(paths, results, strict=True))


def _check_one(path: Path, *, max_age: float, now: float | None) -> tuple[bool, str]:
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
