"""ECS task scale-in protection while long handlers run.

A scale-in sends SIGTERM and ECS waits at most the task's stopTimeout (120 s on Fargate): a 10-minute
clip or download would be released and started over. So while any handler in this process has run
longer than its worker's drain timeout (past that point a SIGTERM would lose its work), the process asks
the ECS agent to protect its task:

    PUT $ECS_AGENT_URI/task-protection/v1/state  {"ProtectionEnabled": true, "ExpiresInMinutes": 30}

renews it while such handlers last, and drops it (`false`) when the last one settles. Outside ECS
(no `ECS_AGENT_URI`) nothing happens. Protection is per task, and a task is one process: every worker
of the process (a group) shares one `TaskProtection`. It never changes a message's fate: an agent that
refuses or does not answer is logged, and the work goes on. Protection does not stop a Spot interruption
or a `StopTask`; the runtime's drain still applies then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx

from shared.middleware import Middleware, Result
from shared.stage import Context

log = logging.getLogger("fleet.protection")

AGENT_ENV = "ECS_AGENT_URI"
STATE_PATH = "/task-protection/v1/state"
EXPIRES_MINUTES = 30  # a crashed process's protection lapses on its own; renewed at half that while held
AGENT_TIMEOUT = 5.0


class TaskProtection:
    """Reference-counted scale-in protection of this task through the ECS agent."""

    def __init__(
        self, agent_uri: str, *, expires_minutes: int = EXPIRES_MINUTES, renew_seconds: float | None = None
    ) -> None:
        if not 1 <= expires_minutes <= 2880:
            raise ValueError("ExpiresInMinutes must be 1-2880")
        self.url = agent_uri.rstrip("/") + STATE_PATH
        self.expires_minutes = expires_minutes
        self.renew_seconds = renew_seconds if renew_seconds is not None else expires_minutes * 60 / 2
        self.holders = 0
        self.protected = False  # as the agent last confirmed
        self._lock: asyncio.Lock | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        self.holders += 1
        if self.holders == 1:
            await self._sync()
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew(), name="fleet-task-protection")

    async def release(self) -> None:
        self.holders = max(0, self.holders - 1)
        if self.holders == 0:
            if self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewer
                self._renewer = None
            await self._sync()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            if self.holders:
                await self._sync(renew=True)

    async def _sync(self, *, renew: bool = False) -> None:
        """Bring the agent to the wanted state (holders > 0), however acquire/release interleaved."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            wanted = self.holders > 0
            if wanted == self.protected and not (renew and wanted):
                return
            body: dict[str, Any] = {"ProtectionEnabled": wanted}
            if wanted:
                body["ExpiresInMinutes"] = self.expires_minutes
            confirmed = await self._put(body)
            if confirmed is not None:
                self.protected = confirmed

    async def _put(self, body: dict[str, Any]) -> bool | None:
        """The protection state the agent confirms, or None (logged) when it would not."""
        try:
            async with httpx.AsyncClient(timeout=AGENT_TIMEOUT) as client:
                resp = await client.put(self.url, json=body)
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("task protection: ECS agent unreachable", extra={"error": str(exc)[:200]})
            return None
        if resp.status_code == 200 and isinstance(data.get("protection"), dict):
            enabled = bool(data["protection"].get("ProtectionEnabled"))
            log.info(
                "task protected from scale-in" if enabled else "task protection dropped",
                extra={"expires": data["protection"].get("ExpirationDate")},
            )
            return enabled
        problem = data.get("failure") or data.get("error") or {}
        log.warning(
            "task protection refused",
            extra={
                "status": resp.status_code,
                "reason": str(problem.get("Reason") or problem.get("Code") or "unknown"),
                "detail": str(problem.get("Detail") or problem.get("Message") or "")[:200],
            },
        )
        return None


_by_agent: dict[str, TaskProtection] = {}


def task_protection() -> TaskProtection | None:
    """This process's protection (one per ECS task), or None outside ECS."""
    uri = os.environ.get(AGENT_ENV)
    if not uri:
        return None
    if uri not in _by_agent:
        _by_agent[uri] = TaskProtection(uri)
    return _by_agent[uri]


@dataclass
class _Hold:
    """One message's claim: a timer, then (past the drain timeout) its acquire."""

    timer: asyncio.Task[None] | None = None
    acquiring: asyncio.Future[None] | None = None


class ProtectionMiddleware(Middleware):
    """Protects the task once a handler has run past its worker's drain timeout; releases on settle."""

    def __init__(self, protection: TaskProtection | None = None) -> None:
        self.protection = protection or task_protection()
        self._holds: dict[str, _Hold] = {}

    async def before(self, ctx: Context) -> None:
        if self.protection is None:
            return
        hold = _Hold()
        hold.timer = asyncio.create_task(self._arm(hold, ctx.tuning.drain_timeout))
        self._holds[ctx.message.receipt_handle] = hold

    async def _arm(self, hold: _Hold, after: float) -> None:
        await asyncio.sleep(after)
        assert self.protection is not None
        # Once started, an acquire completes even if the message settles meanwhile: after() waits for
        # it and releases, so the count never drifts.
        hold.acquiring = asyncio.ensure_future(self.protection.acquire())
        await asyncio.shield(hold.acquiring)

    async def after(self, ctx: Context, result: Result) -> None:
        hold = self._holds.pop(ctx.message.receipt_handle, None)
        if hold is None or hold.timer is None or self.protection is None:
            return
        hold.timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hold.timer
        if hold.acquiring is not None:
            with contextlib.suppress(Exception):
                await hold.acquiring
            await self.protection.release()
