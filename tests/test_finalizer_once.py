"""The finalizer's "once per job and final status" against the faults that broke it: a worker SIGKILLed
between its SNS publish and its bookkeeping, and a Publish whose reply was lost after it took effect.

On a standard topic, every notification of one job and status carries the same `fleet.dedup-id` (SNS has no
idempotent Publish; a subscriber drops repeats by that id). On a FIFO topic, SNS drops them itself: one
notification, exactly."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from typing import Any

import pytest

from shared.resources import LEASES
from shared.stage import Services
from tests.faultproxy import FaultProxy, Rule, query_action
from tests.finalizer_helpers import SEED_SUCCESS, fast_config, notifications, run_finalizer, seed_event, tuning
from tests.helpers import through
from tests.test_process import fleet_cmd, fleet_env
from workers.finalizer.final_event import send_final_event
from workers.finalizer.notification import DEDUP_ATTRIBUTE
from workers.finalizer.resources import NOTIFICATIONS
from workers.finalizer.stage import FinalizerStage


async def tap(services: Services, fifo: bool) -> tuple[str, str]:
    """A topic (the fleet's, or a FIFO one) with a queue subscribed to it: (topic ARN, queue URL)."""
    sqs, sns = services.aws.sqs, services.aws.sns
    prefix = services.settings.prefix
    if fifo:
        topic = (
            await sns.create_topic(
                Name=f"{prefix}notes.fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"}
            )
        )["TopicArn"]
        url = (await sqs.create_queue(QueueName=f"{prefix}tap.fifo", Attributes={"FifoQueue": "true"}))["QueueUrl"]
    else:
        topic = (await sns.create_topic(Name=services.settings.name_of(NOTIFICATIONS)))["TopicArn"]
        url = (await sqs.create_queue(QueueName=f"{prefix}tap"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return topic, url


def dedup_ids(notes: list[dict[str, Any]]) -> set[str]:
    return {n["MessageAttributes"][DEDUP_ATTRIBUTE]["Value"] for n in notes}


def finalized(job: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert job is not None
    return [h for h in job["history"] if h["status"] == "FINALIZED"]


def completes_the_lease(request: Any) -> bool:
    """The idempotency guard's bookkeeping: the update that marks its fleet-leases record COMPLETED."""
    body = request.body
    return request.target == "DynamoDB_20120810.UpdateItem" and b"fleet-leases" in body and b'"COMPLETED"' in body


@pytest.mark.parametrize("fifo", [False, True], ids=["standard topic", "fifo topic"])
async def test_a_finalizer_killed_between_publish_and_bookkeeping_notifies_once(
    fleet: Services, aws_endpoint: str, fifo: bool
) -> None:
    # Given a finalizer process whose bookkeeping after the publish stalls, and a final event
    topic, tap_url = await tap(fleet, fifo)
    event = seed_event(SEED_SUCCESS)
    await fleet.jobs.create(event["execution_id"], "video")
    await send_final_event(fleet, event)
    with FaultProxy(aws_endpoint) as proxy:
        stall = proxy.add(Rule("stalled bookkeeping", completes_the_lease, action="delay", delay=60))
        env = fleet_env(
            fleet.settings,
            FLEET_ENDPOINT_URL=proxy.url,
            FLEET_FINALIZER_TOPIC_ARN=topic,
            FLEET_WORKERS__FINALIZER__VISIBILITY_TIMEOUT="3",
            FLEET_DEFAULTS__WAIT_TIME_SECONDS="1",
        )
        proc = subprocess.Popen(fleet_cmd("worker", "finalizer"), env=env, stderr=subprocess.DEVNULL)
        try:
            # When the notification is out and the bookkeeping is on its way, the process is SIGKILLed
            deadline = time.monotonic() + 60
            while not stall.hits:
                assert time.monotonic() < deadline and proc.poll() is None, "the finalizer never published"
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()

    # And SQS delivers the event again (3 s later) to a new finalizer, once the dead one's lease ran out
    stage = FinalizerStage(fleet, config=fast_config(topic_arn=topic))
    await asyncio.sleep(3.5)
    await run_finalizer(stage, fleet, tune=tuning(visibility_timeout=3))

    # Then the job was finalized once
    job = await fleet.jobs.get(event["execution_id"])
    assert len(finalized(job)) == 1 and job is not None and job["status"] == "COMPLETED"
    # And every notification of it carries one deduplication id; on a FIFO topic, there is just one
    notes = await notifications(fleet, tap_url)
    assert len(dedup_ids(notes)) == 1
    assert len(notes) == (1 if fifo else 2)
    lease = await fleet.aws.dynamodb.get_item(
        TableName=fleet.settings.name_of(LEASES), Key={"pk": {"S": f"finalizer#{event['execution_id']}#COMPLETED"}}
    )
    assert lease["Item"]["status"]["S"] == "COMPLETED"


@pytest.mark.parametrize("fifo", [False, True], ids=["standard topic", "fifo topic"])
async def test_a_publish_whose_reply_was_lost_gives_one_notification(
    fleet: Services, aws_endpoint: str, fifo: bool
) -> None:
    # Given SNS taking the finalizer's first Publish, then losing its reply
    topic, tap_url = await tap(fleet, fifo)
    event = seed_event(SEED_SUCCESS)
    await fleet.jobs.create(event["execution_id"], "video")
    await send_final_event(fleet, event)
    with FaultProxy(aws_endpoint) as proxy:
        publish = proxy.add(Rule("lost reply", query_action("Publish"), times=1, action="lose_reply"))
        async with through(proxy, fleet) as proxied:
            # When the finalizer, on the fleet's own clients, handles the event
            stage = FinalizerStage(proxied, config=fast_config(topic_arn=topic))
            await run_finalizer(stage, fleet)

    # Then one notification reached subscribers: a standard topic's Publish was not sent again behind the
    # finalizer's back; a FIFO topic's was, and SNS dropped the repeat by its deduplication id
    notes = await notifications(fleet, tap_url)
    assert len(notes) == 1, json.dumps(notes)[:500]
    assert len(publish.hits) == (2 if fifo else 1)
    job = await fleet.jobs.get(event["execution_id"])
    assert len(finalized(job)) == 1
