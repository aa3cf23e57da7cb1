"""Finding the embedded fleet from another shell.

`fleet up --embedded` starts its emulator on a stable port (4567, or `FLEET_EMBEDDED_PORT`; a free one if
that is taken) and writes where it is to a state file (`$FLEET_STATE_DIR/embedded.json`, default
`~/.local/state/fleet/`). Every other `fleet` command with no endpoint configured (`FLEET_ENDPOINT_URL` or
`AWS_ENDPOINT_URL`) reads that file, checks the emulator still answers, says on stderr that it uses it, and
uses it — instead of silently talking to real AWS. The file is removed when the fleet stops.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 4567


def state_file() -> Path:
    base = os.environ.get("FLEET_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fleet"
    )
    return Path(base) / "embedded.json"


def embedded_port() -> int:
    wanted = int(os.environ.get("FLEET_EMBEDDED_PORT", DEFAULT_PORT))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            return 0  # taken: any free port (the state file says which)
    return wanted


@dataclass(frozen=True)
class Embedded:
    url: str
    pid: int
    started: str


def announce(url: str) -> Path:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.write_text(json.dumps({"url": url, "pid": os.getpid(), "started": started}))
    return path


def withdraw(url: str) -> None:
    found = _read()
    if found is not None and found.url == url and found.pid == os.getpid():
        state_file().unlink(missing_ok=True)


def running() -> Embedded | None:
    """The embedded fleet another shell started, if it is still there."""
    found = _read()
    if found is None or not _alive(found.pid) or not answers(found.url):
        return None
    return found


def answers(url: str, timeout: float = 0.5) -> bool:
    """Something accepts connections at `url`'s host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _read() -> Embedded | None:
    try:
        data = json.loads(state_file().read_text())
        return Embedded(url=str(data["url"]), pid=int(data["pid"]), started=str(data.get("started", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
