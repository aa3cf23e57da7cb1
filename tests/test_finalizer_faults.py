"""The finalizer under real faults: a local HTTP proxy in front of the emulator answers DynamoDB and SNS
calls of the client under test with AWS-style 5xx errors; every other client talks to the emulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
from aiobotocore.session import get_session

from shared.clients import client_config
from shared.dlq import redrive
from shared.stage import Services
from tests.faultproxy import FaultProxy, Rule, amz_target, query_action
from tests.finalizer_helpers import (
    SEED_SUCCESS,
    attribute,
    fast_config,
    notifications,
    queue_url,
    run_finalizer,
    seed_event,
    subscribe_tap,
    tuning,
)
from workers.finalizer.final_event import send_final_event
from workers.finalizer.resources import FINALIZE
from workers.finalizer.stage import FinalizerStage
from workers.finalizer.tracking import dedicated_dynamodb

if TYPE_CHECKING:
    from types_aiobotocore_sns import SNSClient

UPDATE_ITEM = "DynamoDB_20120810.UpdateItem"


def finalized_entries(job: dict[str, object]) -> list[dict[str, object]]:
    history = job["history"]
    assert isinstance(history, list)
    return [h for h in history if h["status"] == "FINALIZED"]


async def test_a_tracking_update_that_fails_twice_is_retried_with_growing_delays(
    fleet: Services, aws_endpoint: str
) -> None:
    # Given DynamoDB answering the finalizer's tracking update with HTTP 500 twice, then recovering
    event = seed_event(SEED_SUCCESS)
    await fleet.jobs.create(event["execution_id"], "video")
    tap = await subscribe_tap(fleet)
    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("tracking", amz_target(UPDATE_ITEM), times=2))
        asked: list[float] = []

        async def sleep(seconds: float) -> None:
            asked.append(seconds)
            await asyncio.sleep(seconds)

        stage = FinalizerStage(
            fleet,
            config=fast_config(tracking_retry_base=0.2, tracking_retry_jitter=0.02),
            tracking_client=dedicated_dynamodb(fleet.settings, endpoint_url=proxy.url),
            sleep=sleep,
        )

        # When the final event is handled
        await send_final_event(fleet, event)
        worker = await run_finalizer(stage, fleet)

    # Then the update was tried exactly 3 times (botocore's own retries are off for this client)
    assert (len(rule.hits), rule.faulted) == (3, 2)
    # And the waits grew: 0.2 s, then 0.4 s (each plus up to 0.02 s of jitter)...
    assert 0.2 <= asked[0] <= 0.22 and 0.4 <= asked[1] <= 0.42, asked
    # ...and really happened between the attempts the proxy saw (a loaded machine only adds time)
    gaps = [b - a for a, b in zip(rule.hits, rule.hits[1:], strict=False)]
    assert gaps[0] >= asked[0] and gaps[1] >= asked[1], (gaps, asked)
    # And the message succeeded on its first delivery, the job recording how many tries it took
    assert (worker.stats.succeeded, worker.stats.retried) == (1, 0)
    job = await fleet.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "COMPLETED"
    (entry,) = finalized_entries(job)
    assert entry["retry_attempts"] == 3
    assert len(await notifications(fleet, tap)) == 1


async def test_tracking_that_keeps_failing_sends_the_message_back_then_to_the_dlq(
    fleet: Services, aws_endpoint: str
) -> None:
    # Given DynamoDB failing every tracking update, and 2 deliveries allowed per message
    event = seed_event(SEED_SUCCESS)
    tap = await subscribe_tap(fleet)
    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("tracking", amz_target(UPDATE_ITEM), status=500))
        stage = FinalizerStage(
            fleet, config=fast_config(), tracking_client=dedicated_dynamodb(fleet.settings, endpoint_url=proxy.url)
        )

        # When the final event is handled
        await send_final_event(fleet, event)
        worker = await run_finalizer(stage, fleet, tune=tuning(max_attempts=2, backoff_base=1))

    # Then each delivery tried 3 times, the runtime retried once, then dead-lettered it with the reason
    assert len(rule.hits) == 6
    assert (worker.stats.retried, worker.stats.dead_lettered) == (1, 1)
    dlq = await queue_url(fleet, fleet.settings.name_of(FINALIZE) + "-dlq")
    resp = await fleet.aws.sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=0)
    (dead,) = resp["Messages"]
    assert attribute(dict(dead), "fleet.error").startswith(
        "gave up after 2 attempts: tracking update failed after 3 attempts: InternalServerError"
    )
    assert attribute(dict(dead), "fleet.error-code") == "TRACKING_FAILED"
    # And nothing was announced for a job whose state was never recorded
    assert await notifications(fleet, tap) == []
    await fleet.aws.sqs.change_message_visibility(
        QueueUrl=dlq, ReceiptHandle=dead["ReceiptHandle"], VisibilityTimeout=0
    )

    # When the outage is over and the dead letter is redriven
    source = await queue_url(fleet, fleet.settings.name_of(FINALIZE))
    assert await redrive(fleet.aws.sqs, dlq, source) == 1
    await run_finalizer(FinalizerStage(fleet, config=fast_config()), fleet)

    # Then the job is finalized and announced once (no lease was left behind by the failed attempts)
    job = await fleet.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "COMPLETED"
    assert len(await notifications(fleet, tap)) == 1


@asynccontextmanager
async def sns_through(settings_region: str, url: str) -> AsyncIterator[SNSClient]:
    """An SNS client at `url`, one HTTP request per call so an outage shows at once."""
    async with get_session().create_client(
        "sns",
        region_name=settings_region,
        endpoint_url=url,
        config=client_config(4, 10, total_attempts=1),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as sns:
        yield sns


async def test_sns_down_still_finalizes_the_job_and_reports_notification_sent_false(
    fleet: Services, aws_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given SNS answering every Publish with 503 Service Unavailable
    caplog.set_level(logging.INFO, logger="fleet")
    event = seed_event(SEED_SUCCESS)
    tap = await subscribe_tap(fleet)
    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("publish", query_action("Publish"), status=503, code="ServiceUnavailable"))
        async with sns_through(fleet.settings.region, proxy.url) as sns:
            stage = FinalizerStage(fleet, config=fast_config(), sns=sns)

            # When the final event is handled, and delivered once more later
            await send_final_event(fleet, event)
            worker = await run_finalizer(stage, fleet)
            await send_final_event(fleet, event)
            again = await run_finalizer(stage, fleet)

    # Then the job is finalized and its message deleted, not retried
    assert (worker.stats.succeeded, worker.stats.retried, worker.stats.dead_lettered) == (1, 0, 0)
    job = await fleet.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "COMPLETED"
    # And the result says the notification was not sent (the failure is logged with its code)
    results = [r.__dict__["results"] for r in caplog.records if r.getMessage() == "job finalized"]
    assert results == [{"tracking_updated": True, "notification_sent": False, "metrics_recorded": True}]
    (error,) = [r for r in caplog.records if r.getMessage() == "notification not sent"]
    assert error.levelno == logging.ERROR and error.__dict__["error_code"] == "ServiceUnavailable"
    # And SNS was tried once: the redelivery got the stored result instead of trying forever
    assert again.stats.succeeded == 1
    assert (len(rule.hits), rule.faulted) == (1, 1)
    assert await notifications(fleet, tap) == []
