"""The runtime's promises, each against the real emulator over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json

from shared.errors import Fatal, Retry
from shared.runtime import Worker
from shared.stage import Context, Services
from tests.helpers import Job, ScriptedStage, drain_queue, fast_tuning, queue_urls, run_burst, send
from workers.echo import ECHO


def attr(message: dict[str, object], name: str) -> str:
    attrs = message.get("MessageAttributes", {})
    assert isinstance(attrs, dict)
    return str(attrs[name]["StringValue"])


async def test_poison_messages_go_to_the_dlq_at_once_with_the_reason(fleet: Services) -> None:
    # Given a queue holding one good message and three malformed ones
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}, "not json", {"n": "one"}, {"wrong": True}])
    stage = ScriptedStage()

    # When the worker runs until the queue is empty
    worker = await run_burst(stage, fleet, fast_tuning())

    # Then the good message was handled once, the bad ones never reached the stage
    assert [n for n, _, _ in stage.calls] == [1]
    # And each bad one is in the DLQ after a single receive, with its reason and the worker's name
    dead = await drain_queue(fleet, dlq)
    assert len(dead) == 3
    reasons = {m["Body"]: attr(m, "fleet.error") for m in dead}
    assert reasons["not json"].startswith("body is not JSON")
    assert "n: Input should be a valid integer" in reasons['{"n": "one"}']
    assert "n: Field required" in reasons['{"wrong": true}']
    assert {attr(m, "fleet.worker") for m in dead} == {"echo"}
    assert {attr(m, "fleet.attempts") for m in dead} == {"1"}
    # And the source queue is empty
    assert await drain_queue(fleet, url, wait=0) == []
    assert worker.stats.dead_lettered == 3 and worker.stats.succeeded == 1


async def test_sns_envelope_is_unwrapped_before_validation(fleet: Services) -> None:
    # Given a message delivered through SNS (not raw)
    url, _ = await queue_urls(fleet)
    envelope = {"Type": "Notification", "MessageId": "x", "Message": json.dumps({"n": 7})}
    await send(fleet, url, [envelope])
    stage = ScriptedStage()

    # When the worker runs
    await run_burst(stage, fleet, fast_tuning())

    # Then the stage saw the inner message
    assert [n for n, _, _ in stage.calls] == [7]


async def test_retries_back_off_with_growing_visibility_then_dead_letter(fleet: Services) -> None:
    # Given a stage that always asks for a retry, and 3 attempts allowed
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def always_retry(job: Job, ctx: Context) -> None:
        raise Retry("downstream not ready")

    stage = ScriptedStage(always_retry)

    # When the worker runs until the queue is truly empty (burst waits for delayed messages)
    await run_burst(stage, fleet, fast_tuning(max_attempts=3, backoff_base=2))

    # Then the message was tried 3 times, each delay longer than the one before
    attempts = [a for _, a, _ in stage.calls]
    assert attempts == [1, 2, 3]
    times = [t for _, _, t in stage.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # (moto notices an expired visibility within ~1 s, so each gap is its delay plus up to a second)
    assert gaps[0] >= 1.9, gaps  # 2 s: the base
    assert gaps[1] >= gaps[0] + 0.9, gaps  # 4 s: doubled
    # And it is dead-lettered with the reason and the attempt count
    (dead,) = await drain_queue(fleet, dlq)
    assert attr(dead, "fleet.error") == "gave up after 3 attempts: downstream not ready"
    assert attr(dead, "fleet.attempts") == "3"


async def test_fatal_errors_dead_letter_without_retry(fleet: Services) -> None:
    # Given a stage that fails in a way retrying cannot fix
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def fatal(job: Job, ctx: Context) -> None:
        raise Fatal("source video is corrupt", code="SOURCE_CORRUPT")

    stage = ScriptedStage(fatal)

    # When the worker runs
    await run_burst(stage, fleet, fast_tuning(max_attempts=5))

    # Then it ran once and went straight to the DLQ with its code
    assert len(stage.calls) == 1
    (dead,) = await drain_queue(fleet, dlq)
    assert attr(dead, "fleet.error-code") == "SOURCE_CORRUPT"


async def test_unexpected_exceptions_are_retried_then_dead_lettered(fleet: Services) -> None:
    # Given a stage with a bug
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def bug(job: Job, ctx: Context) -> None:
        raise KeyError("missing")

    stage = ScriptedStage(bug)

    # When the worker runs with 2 attempts
    await run_burst(stage, fleet, fast_tuning(max_attempts=2))

    # Then it was retried, then dead-lettered naming the exception
    assert [a for _, a, _ in stage.calls] == [1, 2]
    (dead,) = await drain_queue(fleet, dlq)
    assert "KeyError" in attr(dead, "fleet.error")


async def test_heartbeat_keeps_a_long_job_from_being_delivered_twice(fleet: Services) -> None:
    # Given a job that runs 3x longer than the visibility timeout, and two workers polling the queue
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1, "sleep": 6}])
    stage = ScriptedStage()
    tuning = fast_tuning(visibility_timeout=2, heartbeat_interval=0.5)
    workers = [await Worker.create(stage, fleet, queue=ECHO, tuning=tuning, burst=True) for _ in range(2)]

    # When both run until the queue is empty
    await asyncio.wait_for(asyncio.gather(*(w.run() for w in workers)), 60)

    # Then the job was handled exactly once and deleted
    assert len(stage.calls) == 1
    assert sum(w.stats.succeeded for w in workers) == 1
    assert await drain_queue(fleet, url, wait=0) == []


async def test_without_heartbeat_the_same_job_would_be_redelivered(fleet: Services) -> None:
    # Given the same long job, but a heartbeat slower than the job itself (so it never beats in time)
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1, "sleep": 4}])
    stage = ScriptedStage()
    tuning = fast_tuning(visibility_timeout=1, heartbeat_interval=0.99, concurrency=2)
    tuning = tuning.model_copy(update={"heartbeat_interval": 30.0})  # bypass validation on purpose

    # When a worker runs
    await run_burst(stage, fleet, tuning)

    # Then SQS redelivered it while the first run was still going: the control for the test above
    assert len(stage.calls) >= 2


async def test_concurrency_never_exceeds_the_limit(fleet: Services) -> None:
    # Given 15 jobs of 0.3 s and a limit of 3
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": i, "sleep": 0.3} for i in range(15)])
    stage = ScriptedStage()

    # When the worker runs
    await run_burst(stage, fleet, fast_tuning(concurrency=3))

    # Then all ran, at most 3 at a time, and the limit was actually reached
    assert sorted(n for n, _, _ in stage.calls) == list(range(15))
    assert stage.max_running == 3


async def test_stop_drains_then_releases_unfinished_messages(fleet: Services) -> None:
    # Given two quick jobs and two that would take a minute
    url, _ = await queue_urls(fleet)
    await send(
        fleet,
        url,
        [{"n": 1, "sleep": 0.2}, {"n": 2, "sleep": 0.2}, {"n": 3, "sleep": 60}, {"n": 4, "sleep": 60}],
    )
    stage = ScriptedStage()
    worker = await Worker.create(stage, fleet, queue=ECHO, tuning=fast_tuning(drain_timeout=1))
    task = asyncio.create_task(worker.run())

    # When it is asked to stop once all four are running
    for _ in range(100):
        if len(stage.calls) == 4:
            break
        await asyncio.sleep(0.1)
    worker.stop()
    stats = await asyncio.wait_for(task, 10)

    # Then the quick ones finished and were deleted, and the slow ones are visible again at once
    assert stats.succeeded == 2 and stats.released == 2
    back = await drain_queue(fleet, url, wait=0)
    assert sorted(json.loads(m["Body"])["n"] for m in back) == [3, 4]


async def test_a_message_the_dlq_refuses_stays_on_its_queue(fleet: Services) -> None:
    # Given a worker whose DLQ has been deleted under it, and a poison message
    url, dlq = await queue_urls(fleet)
    worker = await Worker.create(ScriptedStage(), fleet, queue=ECHO, tuning=fast_tuning(visibility_timeout=1))
    await fleet.aws.sqs.delete_queue(QueueUrl=dlq)
    await send(fleet, url, ["not json"])

    # When the worker tries to dead-letter it
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(2.5)
    worker.stop()
    await asyncio.wait_for(task, 10)

    # Then the message was not deleted: it is still on the source queue
    await asyncio.sleep(1)
    (left,) = await drain_queue(fleet, url, wait=1)
    assert left["Body"] == "not json"
