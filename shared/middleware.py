"""Cross-cutting concerns around every handler: logging, metrics, job tracking. One concern a class;
stages never repeat them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared.fate import Fate, Outcome
from shared.metrics import Metric
from shared.stage import Context

log = logging.getLogger("fleet.runtime")


@dataclass(frozen=True)
class Result:
    """A message's fate, and whether SQS confirmed it (`settled`): a delete that failed is not a success."""

    fate: Fate
    duration: float
    settled: bool = True

    @property
    def outcome(self) -> Outcome:
        return self.fate.outcome


class Middleware:
    async def before(self, ctx: Context) -> None:
        """Called after validation, right before the handler runs."""

    async def after(self, ctx: Context, result: Result) -> None:
        """Called once the message's fate is applied (deleted, delayed, dead-lettered, released or lost)."""


LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.RETRYING: logging.WARNING,
    Outcome.DEAD_LETTERED: logging.ERROR,
    Outcome.RELEASED: logging.WARNING,
    Outcome.LOST: logging.ERROR,
}
UNSETTLED = {
    Outcome.SUCCEEDED: "message succeeded, but its delete failed",
    Outcome.RETRYING: "message retrying, but its delay could not be set",
    Outcome.DEAD_LETTERED: "message dead-lettered, but its delete failed",
    Outcome.RELEASED: "message released, but SQS did not confirm it",
}


class LogMiddleware(Middleware):
    """One line per failure, release or loss; successes at DEBUG unless `successes` (FLEET_LOG_SUCCESSES):
    at a thousand messages a second a line per success costs CPU and CloudWatch Logs ingestion, and the
    worker logs a summary of its successes every minute instead."""

    def __init__(self, successes: bool = False) -> None:
        self.success_level = logging.INFO if successes else logging.DEBUG

    async def before(self, ctx: Context) -> None:
        log.debug("message started")

    async def after(self, ctx: Context, result: Result) -> None:
        fate = result.fate
        fields: dict[str, object] = {"outcome": fate.outcome.value, "duration_ms": round(result.duration * 1000, 1)}
        if fate.error is not None:
            fields.update(error=fate.error.reason, error_code=fate.error.code)
        if fate.delay is not None:
            fields["retry_in_s"] = fate.delay
        if fate.note:
            fields["retry_note"] = fate.note
        if fate.outcome is Outcome.LOST:
            log.error("message lost: stopped its handler", extra=fields)
        elif not result.settled:
            log.error(UNSETTLED[fate.outcome], extra={**fields, "consequence": "SQS will deliver it again"})
        elif fate.outcome is Outcome.SUCCEEDED:
            if log.isEnabledFor(self.success_level):
                log.log(self.success_level, "message succeeded", extra=fields)
        else:
            log.log(LEVELS[fate.outcome], f"message {fate.outcome.label}", extra=fields)


class MetricsMiddleware(Middleware):
    async def after(self, ctx: Context, result: Result) -> None:
        dims = {"Worker": ctx.worker}
        now = time.time()
        outcome = result.outcome
        metrics = [Metric("HandlerDuration", result.duration * 1000, "Milliseconds", dims, now)]
        if outcome is Outcome.SUCCEEDED:
            metrics.append(Metric("MessagesProcessed", 1, "Count", dims, now))
        elif outcome in (Outcome.RETRYING, Outcome.DEAD_LETTERED):
            metrics.append(Metric("MessagesFailed", 1, "Count", dims, now))
        if outcome is Outcome.DEAD_LETTERED:
            metrics.append(Metric("MessagesDeadLettered", 1, "Count", dims, now))
        if outcome is Outcome.LOST:
            metrics.append(Metric("MessagesLost", 1, "Count", dims, now))
        if not result.settled:
            metrics.append(Metric("SettleFailed", 1, "Count", dims, now))
        sent = ctx.message.sent_at
        if sent is not None and ctx.attempt == 1:
            metrics.append(Metric("QueueLag", max(0.0, now - sent), "Seconds", dims, now))
        await ctx.services.metrics.emit(*metrics)


JOB_STATUS = {
    Outcome.SUCCEEDED: "SUCCEEDED",
    Outcome.RETRYING: "RETRYING",
    Outcome.DEAD_LETTERED: "FAILED",
    Outcome.RELEASED: "RELEASED",
    Outcome.LOST: "LOST",
}


class JobsMiddleware(Middleware):
    """Messages whose `fleet.job-id` names a job that grants their queue get their stage transitions recorded
    in fleet-jobs. A claim on a job that does not exist, or does not grant this queue, is ignored and logged:
    a message touches only a job it is entitled to."""

    async def before(self, ctx: Context) -> None:
        claimed = ctx.message.job_id
        if not claimed:
            return
        job = await self._record(ctx, claimed, "RUNNING")
        if job is None:
            log.warning("fleet.job-id names a job this queue may not touch: ignored", extra={"claimed_job": claimed})
            return
        ctx.job_id = claimed
        ctx.job_kind = str(job.get("kind", ""))
        ctx.job_terminal = job.get("terminal") == ctx.worker

    async def after(self, ctx: Context, result: Result) -> None:
        if not ctx.job_id:
            return
        fate = result.fate
        status = JOB_STATUS[fate.outcome]
        final = status if ctx.job_terminal and fate.outcome in (Outcome.SUCCEEDED, Outcome.DEAD_LETTERED) else None
        await self._record(
            ctx,
            ctx.job_id,
            status,
            final=final,
            error=fate.error.reason if fate.error else None,
            settle_failed=None if result.settled else UNSETTLED.get(fate.outcome),
        )

    async def _record(
        self, ctx: Context, job_id: str, status: str, final: str | None = None, **data: object
    ) -> dict[str, object] | None:
        try:
            return await ctx.services.jobs.record_stage(
                job_id,
                ctx.worker,
                status,
                queue=ctx.queue,
                final=final,
                attempt=ctx.attempt,
                message_id=ctx.message.id,
                **data,
            )
        except Exception as exc:
            # Tracking must not change a message's fate; the stage's own result is what counts.
            log.warning("job status not recorded", extra={"error": str(exc)})
            return None


def default_middleware(log_successes: bool = False) -> list[Middleware]:
    from shared.protection import ProtectionMiddleware  # it builds on this module

    return [LogMiddleware(log_successes), MetricsMiddleware(), JobsMiddleware(), ProtectionMiddleware()]
