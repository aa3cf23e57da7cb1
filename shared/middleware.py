"""Cross-cutting concerns around every handler: logging, metrics, job tracking. One concern a class;
stages never repeat them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from shared.errors import FleetError
from shared.metrics import Metric
from shared.stage import Context

log = logging.getLogger("fleet.runtime")

Status = Literal["succeeded", "retrying", "dead_lettered", "released"]


@dataclass(frozen=True)
class Outcome:
    status: Status
    duration: float
    error: FleetError | None = None
    retry_in: int | None = None


class Middleware:
    async def before(self, ctx: Context) -> None:
        """Called after validation, right before the handler runs."""

    async def after(self, ctx: Context, outcome: Outcome) -> None:
        """Called once the message's fate is settled (deleted, delayed, dead-lettered or released)."""


class LogMiddleware(Middleware):
    async def before(self, ctx: Context) -> None:
        log.debug("message started")

    async def after(self, ctx: Context, outcome: Outcome) -> None:
        fields: dict[str, object] = {
            "outcome": outcome.status,
            "duration_ms": round(outcome.duration * 1000, 1),
        }
        if outcome.error is not None:
            fields.update(error=outcome.error.reason, error_code=outcome.error.code)
        if outcome.retry_in is not None:
            fields["retry_in_s"] = outcome.retry_in
        level = {
            "succeeded": logging.INFO,
            "retrying": logging.WARNING,
            "dead_lettered": logging.ERROR,
            "released": logging.WARNING,
        }[outcome.status]
        log.log(level, f"message {outcome.status.replace('_', '-')}", extra=fields)


class MetricsMiddleware(Middleware):
    async def after(self, ctx: Context, outcome: Outcome) -> None:
        dims = {"Worker": ctx.worker}
        metrics = [Metric("HandlerDuration", outcome.duration * 1000, "Milliseconds", dims)]
        if outcome.status == "succeeded":
            metrics.append(Metric("MessagesProcessed", 1, "Count", dims))
        elif outcome.status in ("retrying", "dead_lettered"):
            metrics.append(Metric("MessagesFailed", 1, "Count", dims))
        if outcome.status == "dead_lettered":
            metrics.append(Metric("MessagesDeadLettered", 1, "Count", dims))
        lag = ctx.message.lag_seconds
        if lag is not None and ctx.attempt == 1:
            metrics.append(Metric("QueueLag", lag, "Seconds", dims))
        await ctx.services.metrics.emit(*metrics)


class JobsMiddleware(Middleware):
    """Messages that carry a `fleet.job-id` attribute get their stage transitions recorded in fleet-jobs."""

    async def before(self, ctx: Context) -> None:
        if ctx.job_id:
            await self._record(ctx, "RUNNING")

    async def after(self, ctx: Context, outcome: Outcome) -> None:
        if not ctx.job_id or outcome.status == "released":
            return
        status = {"succeeded": "SUCCEEDED", "retrying": "RETRYING", "dead_lettered": "FAILED"}[outcome.status]
        await self._record(ctx, status, error=outcome.error.reason if outcome.error else None)

    async def _record(self, ctx: Context, status: str, error: str | None = None) -> None:
        assert ctx.job_id is not None
        try:
            await ctx.services.jobs.record_stage(
                ctx.job_id, ctx.worker, status, attempt=ctx.attempt, message_id=ctx.message.id, error=error
            )
        except Exception as exc:
            # Tracking must not change a message's fate; the stage's own result is what counts.
            log.warning("job status not recorded", extra={"error": str(exc)})


def default_middleware() -> list[Middleware]:
    from shared.protection import ProtectionMiddleware  # it builds on this module

    return [LogMiddleware(), MetricsMiddleware(), JobsMiddleware(), ProtectionMiddleware()]
