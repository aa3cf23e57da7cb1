"""The seed's five CloudWatch metrics (seeds/000 §6), each with dimensions Environment and Status."""

from __future__ import annotations

import logging

from shared.metrics import Metric, Metrics
from workers.finalizer.summary import Summary

log = logging.getLogger("fleet.finalizer")


def job_metrics(summary: Summary, environment: str) -> list[Metric]:
    dims = {"Environment": environment, "Status": summary.final_status}
    metrics = [
        Metric("ProcessingSuccess", 1 if summary.final_status == "COMPLETED" else 0, "Count", dims),
        Metric("ProcessingFailure", 1 if summary.final_status == "FAILED" else 0, "Count", dims),
        Metric("TokensProcessed", summary.tokens_used, "Count", dims),
        Metric("ProcessingCost", float(summary.cost_usd), "None", dims),  # USD
    ]
    if summary.duration_seconds is not None:
        metrics.insert(0, Metric("ProcessingDuration", summary.duration_seconds, "Seconds", dims))
    return metrics


async def record_metrics(sink: Metrics, summary: Summary, environment: str) -> bool:
    """Nice-to-have: a failure is logged and reported, never raised."""
    try:
        ok = await sink.emit(*job_metrics(summary, environment))
        if sink.mode == "cloudwatch":
            # `emit` only buffers in this mode; flush so `metrics_recorded` tells the truth.
            ok = await sink.flush() and ok
    except Exception as exc:
        log.warning("metrics not recorded", extra={"error": str(exc)[:300]})
        return False
    if not ok:
        log.warning("metrics not recorded")
    return ok
