"""Logs and metrics: structured, carrying context, never carrying secrets."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from shared.logs import configure_logging, log_context, register_secret
from shared.metrics import Metric, Metrics
from shared.stage import Services
from tests.helpers import ScriptedStage, fast_tuning, queue_urls, run_burst, send


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_lines_carry_context_and_hide_secrets(captured: io.StringIO) -> None:
    # Given a registered secret and a message context
    register_secret("s3cr3t-refresh-token-value")
    log = logging.getLogger("fleet.test")

    # When code logs inside the context, with secret-looking fields and the secret in free text
    with log_context(worker="sync", message_id="m-1", job_id="j-1", attempt=2):
        log.info("refreshed", extra={"access_token": "abc123456", "note": "got s3cr3t-refresh-token-value back"})

    # Then the line is JSON with the context, and no secret survives
    (entry,) = lines(captured)
    assert entry["worker"] == "sync" and entry["message_id"] == "m-1" and entry["attempt"] == 2
    assert entry["access_token"] == "***"
    assert "s3cr3t" not in json.dumps(entry)


def total(docs: list[dict[str, Any]], name: str) -> float:
    """A metric's sum over EMF documents, whose values are a number or an array of numbers."""
    values = [d[name] for d in docs if name in d]
    return sum(sum(v) if isinstance(v, list) else v for v in values)


async def test_runtime_metrics_are_emitted_as_embedded_metric_format(fleet: Services) -> None:
    # Given a worker whose metrics go to an EMF stream
    stream = io.StringIO()
    fleet.metrics = Metrics("emf", "Fleet", stream=stream)
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}, "garbage"])

    # When it processes one good and one poison message
    await run_burst(ScriptedStage(), fleet, fast_tuning())

    # Then EMF documents count them under the Fleet namespace with a Worker dimension
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Fleet" for d in docs)
    assert total(docs, "MessagesProcessed") == 1
    assert total(docs, "MessagesDeadLettered") == 1
    # (buffered: one document per flush and dimension set, not one per message)
    assert len(docs) == 1 and docs[0]["HandlerDuration"] and len(docs[0]["HandlerDuration"]) == 2
    assert all(d["Worker"] == "echo" for d in docs)
    assert any("QueueLag" in d for d in docs)


async def test_cloudwatch_mode_batches_put_metric_data(fleet: Services) -> None:
    # Given metrics in cloudwatch mode
    metrics = Metrics("cloudwatch", "FleetTest" + fleet.settings.prefix, cloudwatch=fleet.aws.cloudwatch)

    # When a few are emitted and flushed
    for i in range(3):
        await metrics.emit(Metric("Widgets", i, "Count", {"Worker": "echo"}))
    assert await metrics.flush()

    # Then CloudWatch has them
    listed = await fleet.aws.cloudwatch.list_metrics(Namespace="FleetTest" + fleet.settings.prefix)
    assert [m["MetricName"] for m in listed["Metrics"]] == ["Widgets"]
