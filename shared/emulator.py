"""The embedded AWS emulator: a moto server on a free loopback port, started by the project itself.

Used by `make demo`, `fleet up --embedded` and the tests. Clients talk to it over HTTP exactly as they
would to AWS or LocalStack; only `FLEET_ENDPOINT_URL` differs.

One patch is applied to every emulator fleet starts (thread or subprocess): moto's SQS `Queue.delete_message`
rebuilds the queue's message list without holding the queue's lock, while sends and receives hold it. Under
concurrent deletes, deleted messages come back (8 threads deleting 400 received messages left 299 visible
again on moto 5.2.5), and a send racing a delete can vanish. `patch_moto()` runs the delete under that lock.
It is pinned to the moto versions it was checked on (`CHECKED_MOTO`); on others it does nothing and says so.

The same patch runs moto's DynamoDB requests one at a time. moto checks a write's condition and then applies
it without a lock, so two concurrent conditional writes on one item can both pass (8 writers compare-and-
setting one item on moto 5.2.5: 70 writes accepted, 66 took effect); AWS applies each atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from shared.settings import ConfigError

MISSING_MOTO = (
    "the embedded AWS emulator needs moto, which this installation leaves out (the production image "
    "does not ship it): install it with `pip install 'fleet[emulator]'` (make demo and make test do), "
    "or point FLEET_ENDPOINT_URL at LocalStack or AWS instead"
)

CHECKED_MOTO = ("5.2.",)  # moto versions whose Queue.delete_message this patch was checked against

log = logging.getLogger("fleet.emulator")


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a server child never outlives its owner."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def patch_moto() -> bool:
    """Make moto's SQS deletes take the queue's lock and its DynamoDB requests run one at a time (see the
    module's docstring). True if patched."""
    import moto
    from moto.sqs.models import Queue

    if getattr(Queue.delete_message, "_fleet_locked", False):
        return True
    if not moto.__version__.startswith(CHECKED_MOTO):
        log.warning("moto %s is not a version the SQS delete patch was checked on; not patching", moto.__version__)
        return False
    unlocked = Queue.delete_message

    def delete_message(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:  # a Condition over an RLock: re-entrant
            unlocked(self, receipt_handle)

    delete_message._fleet_locked = True  # type: ignore[attr-defined]
    Queue.delete_message = delete_message  # type: ignore[method-assign]
    _serialize_dynamodb()
    return True


def _serialize_dynamodb() -> None:
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.call_action, "_fleet_locked", False):
        return
    unlocked = DynamoHandler.call_action
    lock = threading.Lock()

    def call_action(self: DynamoHandler) -> Any:
        with lock:
            return unlocked(self)

    call_action._fleet_locked = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = call_action  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_moto() -> None:
    """Fail with what to install, not a bare ImportError, where moto is not installed."""
    try:
        import moto  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_MOTO) from None


def wait_until_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except Exception as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"embedded AWS emulator did not start at {url}: {last}")


class EmbeddedAws:
    """`with EmbeddedAws() as aws: aws.url` — an in-process (thread) or subprocess moto server.

    A subprocess keeps the emulator's CPU work off the caller's GIL (benchmarks, workers in the same
    process); a thread starts faster and needs no extra process.
    """

    def __init__(self, *, mode: str = "thread", port: int = 0) -> None:
        if mode not in ("thread", "process"):
            raise ValueError("mode is 'thread' or 'process'")
        self.mode = mode
        self.port = port
        self.url = ""
        self._server: object | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        require_moto()
        if self.mode == "thread":
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
            patch_moto()

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            self._server = server
            self.url = f"http://{host}:{port}"
        else:
            port = self.port or free_port()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "shared.moto_server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MOTO_CALL_RESET_API": "true"},
            )
            self.url = f"http://127.0.0.1:{port}"
        wait_until_up(self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def temporary_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block (this process and its children), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def endpoint_env(url: str) -> contextlib.AbstractContextManager[None]:
    """Point everything in this process (and its children) at `url`, with emulator credentials."""
    return temporary_env(
        {"FLEET_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    )
