"""Knowing which message a thread works for, so no two runs of one message's work overlap in a process.

A timeout cancels a handler, but not a thread it started with `asyncio.to_thread` (compact writes Parquet that
way): the thread runs on. The runtime installs `TrackingExecutor` as the loop's default executor; every
`to_thread`/`run_in_executor(None, ...)` call is recorded against the message whose handler made it (a
ContextVar, which `to_thread` carries into the call). Before a message is settled — before a retry can run
its work again — the runtime waits for that message's threads to finish, its heartbeat still keeping it hidden.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

_current: ContextVar[set[concurrent.futures.Future[Any]] | None] = ContextVar("fleet_threads", default=None)


class TrackingExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        threads = _current.get()
        if threads is not None:
            threads.add(future)
            future.add_done_callback(threads.discard)
        return future


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Make the loop's default executor a tracking one (once per loop)."""
    if not getattr(loop, "_fleet_tracking", False):
        loop.set_default_executor(TrackingExecutor(thread_name_prefix="fleet"))
        loop._fleet_tracking = True  # type: ignore[attr-defined]


def track() -> set[concurrent.futures.Future[Any]]:
    """Record threads started from here on (in this task's context) in the returned set."""
    threads: set[concurrent.futures.Future[Any]] = set()
    _current.set(threads)
    return threads


async def finish(threads: set[concurrent.futures.Future[Any]], within: float) -> bool:
    """Wait up to `within` seconds for `threads` to finish; True if they all did."""
    if not threads:
        return True
    _, pending = await asyncio.wait([asyncio.wrap_future(f) for f in list(threads)], timeout=within)
    return not pending
