"""The runtime's delivery holes, each reproduced against the real emulator (and a fault proxy where a network
or service fault is needed), named after the fault it closes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

from shared.dlq import peek, redrive
from shared.errors import Retry
from shared.health import check_health, health_path
from shared.metrics import Metric, Metrics
from shared.runtime import Worker
from shared.settings import ConfigError, load_settings
from shared.stage import Context, Services
from tests.faultproxy import FaultProxy, Request, Rule, sqs_action
from tests.helpers import Job, ScriptedStage, drain_queue, fast_tuning, queue_urls, run_burst, send, through
from workers.echo import ECHO


async def wait_until(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.05)


async def receive_one(services: Services, url: str, wait: int = 1) -> dict[str, object] | None:
    resp = await services.aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=wait, MessageAttributeNames=["All"]
    )
    messages = resp.get("Messages", [])
    return dict(messages[0]) if messages else None


def visibility_of(request: Request) -> list[int]:
    """The VisibilityTimeout values a ChangeMessageVisibility(Batch) request asks for."""
    body = json.loads(request.body or b"{}")
    entries = body.get("Entries", [body])
    return [int(e.get("VisibilityTimeout", -1)) for e in entries]


# --- 2. the heartbeat is stopped, and waited for, before the message is settled -------------------------


async def test_heartbeat_is_awaited_before_settle_so_a_late_extension_cannot_hide_a_retry(
    fleet: Services, aws_endpoint: str
) -> None:
    # Given heartbeat extensions (visibility 6 s) that reach SQS 1.5 s late, and a handler that runs past one
    # heartbeat, then asks to be retried in 2 s
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    retried_at: list[float] = []

    async def once_then_ok(job: Job, ctx: Context) -> None:
        if ctx.attempt == 1:
            await asyncio.sleep(1.2)
            retried_at.append(time.monotonic())
            raise Retry("not yet", delay=2)

    stage = ScriptedStage(once_then_ok)
    with FaultProxy(aws_endpoint) as proxy:
        proxy.add(
            Rule(
                "late heartbeat",
                lambda r: "ChangeMessageVisibility" in r.target and 6 in visibility_of(r),
                action="delay",
                delay=1.5,
            )
        )
        async with through(proxy, fleet) as proxied:
            # When the worker runs until the message succeeds
            tuning = fast_tuning(visibility_timeout=6, heartbeat_interval=1.0, burst_idle_seconds=1)
            await run_burst(stage, proxied, tuning, timeout=60)

    # Then the retry came back about 2 s after it was asked for, not after the late extension's 6 s
    (first_end,) = retried_at
    second_start = stage.calls[1][2]
    assert second_start - first_end < 4.5, second_start - first_end


async def test_heartbeat_is_awaited_before_a_release_at_shutdown(fleet: Services, aws_endpoint: str) -> None:
    # Given a long handler whose heartbeat extensions (visibility 8 s) reach SQS 1.5 s late
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1, "sleep": 60}])
    stage = ScriptedStage()
    with FaultProxy(aws_endpoint) as proxy:
        proxy.add(
            Rule(
                "late heartbeat",
                lambda r: "ChangeMessageVisibility" in r.target and 8 in visibility_of(r),
                action="delay",
                delay=1.5,
            )
        )
        async with through(proxy, fleet) as proxied:
            worker = await Worker.create(
                stage, proxied, queue=ECHO, tuning=fast_tuning(visibility_timeout=8, heartbeat_interval=1.0)
            )
            task = asyncio.create_task(worker.run())
            await wait_until(lambda: len(stage.calls) == 1)
            await asyncio.sleep(1.2)  # a heartbeat is now on its way

            # When the worker is stopped at once, releasing the message
            worker.stop(now=True)
            await asyncio.wait_for(task, 30)
            stopped = time.monotonic()

    # Then, once the late extension has had time to land, the message is still visible: it was released
    # after the extension, not before it
    await asyncio.sleep(2)
    back = await receive_one(fleet, url, wait=1)
    assert back is not None and time.monotonic() - stopped < 5
    assert worker.stats.released == 1


# --- 3. no visibility beyond SQS's 12 h limit --------------------------------------------------------------


async def test_a_retry_delay_beyond_the_12h_visibility_limit_is_capped_not_refused(
    fleet: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a handler that asks to be retried in 12 hours
    caplog.set_level(logging.INFO, logger="fleet")
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def much_later(job: Job, ctx: Context) -> None:
        raise Retry("come back tomorrow", delay=43_200)

    worker = await Worker.create(ScriptedStage(much_later), fleet, queue=ECHO, tuning=fast_tuning(visibility_timeout=2))
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.stats.retried == 1)
    worker.stop()
    await asyncio.wait_for(task, 30)

    # Then it stays hidden well past its visibility timeout (SQS refused nothing)
    await asyncio.sleep(2.5)
    assert await receive_one(fleet, url, wait=1) is None
    # And the log gives the delay really applied: what remains of the 12 h since receipt
    (line,) = [r for r in caplog.records if r.getMessage() == "message retrying"]
    assert 43_150 <= line.__dict__["retry_in_s"] < 43_200
    assert "12 h" in line.__dict__["retry_note"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_DEFAULTS__BACKOFF_MAX": "43200"}, "FLEET_DEFAULTS__BACKOFF_MAX"),
        ({"FLEET_DEFAULTS__HANDLER_TIMEOUT": "50000"}, "FLEET_DEFAULTS__HANDLER_TIMEOUT"),
        (
            {"FLEET_DEFAULTS__HANDLER_TIMEOUT": "43000", "FLEET_DEFAULTS__VISIBILITY_TIMEOUT": "600"},
            "12 h",
        ),
    ],
)
def test_settings_that_cannot_fit_sqs_visibility_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    # Given a delay or a handler time SQS cannot keep hidden
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # When settings load, Then they are refused with the setting named
    with pytest.raises(ConfigError, match=message):
        load_settings()


# --- 4. a message polled around a stop is released at once --------------------------------------------------


async def test_stopping_during_a_long_poll_releases_what_the_poll_received(fleet: Services) -> None:
    # Given a worker in the middle of a 3 s long poll on an empty queue
    url, _ = await queue_urls(fleet)
    worker = await Worker.create(ScriptedStage(), fleet, queue=ECHO, tuning=fast_tuning(wait_time_seconds=3))
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.stats.polls >= 1)
    await asyncio.sleep(0.3)

    # When it is stopped, and a message arrives while that poll is still open at the server
    worker.stop()
    await send(fleet, url, [{"n": 1}])
    await asyncio.wait_for(task, 30)

    # Then the message is visible again at once, not hidden for the 30 s visibility timeout
    back = await receive_one(fleet, url, wait=2)
    assert back is not None and json.loads(str(back["Body"])) == {"n": 1}


# --- 5. releases do not use up attempts ------------------------------------------------------------------


async def test_releases_at_shutdown_do_not_count_as_attempts(fleet: Services) -> None:
    # Given a long job released four times by workers shutting down (deploys, scale-in)
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    attempts_seen: list[int] = []

    async def slow_then_flaky(job: Job, ctx: Context) -> None:
        attempts_seen.append(ctx.attempt)
        if len(attempts_seen) <= 4:
            await asyncio.sleep(60)
        if len(attempts_seen) == 5:
            raise Retry("one real failure", delay=1)

    stage = ScriptedStage(slow_then_flaky)
    tuning = fast_tuning(drain_timeout=0, max_attempts=2)
    for release in range(4):
        worker = await Worker.create(stage, fleet, queue=ECHO, tuning=tuning)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda n=release: len(attempts_seen) == n + 1)
        worker.stop()
        await asyncio.wait_for(task, 30)
        assert worker.stats.released >= 1  # (a poll still open at the stop may receive the copy, and release it)

    # When a worker then meets one real failure (max_attempts=2) and tries again
    await run_burst(stage, fleet, tuning.model_copy(update={"burst_idle_seconds": 2}))

    # Then the releases were never attempts: the failure was attempt 1 and the retry attempt 2, which succeeded
    assert attempts_seen == [1, 1, 1, 1, 1, 2]
    assert await drain_queue(fleet, dlq, wait=0) == []
    assert await drain_queue(fleet, url, wait=0) == []


# --- 6. a failed delete is reported as what it is ------------------------------------------------------------


def deletes(request: Request) -> bool:
    return request.target in ("AmazonSQS.DeleteMessage", "AmazonSQS.DeleteMessageBatch")


async def test_a_failed_delete_is_not_reported_as_success_nor_run_again(
    fleet: Services, aws_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given SQS refusing the worker's first deletes
    caplog.set_level(logging.INFO, logger="fleet")
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    stage = ScriptedStage()
    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("no deletes", deletes, times=4, status=403, code="AccessDenied"))
        async with through(proxy, fleet) as proxied:
            # When the worker handles the message until its queue is empty
            worker = await run_burst(stage, proxied, fast_tuning(visibility_timeout=1), timeout=60)

    # Then the handler ran once, although SQS delivered the message again after the failed delete
    assert rule.faulted == 4
    assert len(stage.calls) == 1
    assert worker.stats.succeeded == 1 and worker.stats.settle_failed >= 1
    # And the failed delete was logged as such, not as a success
    assert any(r.getMessage() == "message succeeded, but its delete failed" for r in caplog.records)
    assert await drain_queue(fleet, url, wait=0) == []


async def test_a_poison_message_whose_delete_fails_is_dead_lettered_once(fleet: Services, aws_endpoint: str) -> None:
    # Given SQS refusing the worker's first deletes, and a poison message
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, ["not json"])
    with FaultProxy(aws_endpoint) as proxy:
        proxy.add(Rule("no deletes", deletes, times=4, status=403, code="AccessDenied"))
        async with through(proxy, fleet) as proxied:
            # When the worker runs until its queue is empty
            await run_burst(ScriptedStage(), proxied, fast_tuning(visibility_timeout=1), timeout=60)

    # Then the DLQ shows one dead letter, carrying the source message's id
    letters = await peek(fleet.aws.sqs, dlq)
    assert [letter.body for letter in letters] == ["not json"]
    assert letters[0].source_message_id
    # And a redrive moves it back once, leaving the DLQ empty
    assert await redrive(fleet.aws.sqs, dlq, url) == 1
    assert len(await drain_queue(fleet, url, wait=0)) == 1
    assert await drain_queue(fleet, dlq, wait=0) == []


# --- 7. handler_timeout says what happened ---------------------------------------------------------------


async def test_a_handlers_own_timeout_error_keeps_its_cause(fleet: Services) -> None:
    # Given a handler whose own call times out (long before the runtime's handler_timeout)
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def upstream_times_out(job: Job, ctx: Context) -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.05)

    # When it runs out of attempts
    await run_burst(ScriptedStage(upstream_times_out), fleet, fast_tuning(max_attempts=1, handler_timeout=30))

    # Then the dead letter names the handler's own timeout, not the runtime's
    (dead,) = await drain_queue(fleet, dlq)
    reason = dead["MessageAttributes"]["fleet.error"]["StringValue"]
    assert "handler timed out" not in reason and "TimeoutError" in reason


async def test_a_handler_that_swallows_its_cancellation_is_not_a_success(fleet: Services) -> None:
    # Given a handler that ignores the runtime's timeout cancellation and returns normally
    url, dlq = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])

    async def stubborn(job: Job, ctx: Context) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return

    # When it runs with a 0.3 s handler timeout and one attempt
    worker = await run_burst(ScriptedStage(stubborn), fleet, fast_tuning(max_attempts=1, handler_timeout=0.3))

    # Then the message is dead-lettered as timed out, not deleted as a success
    assert worker.stats.succeeded == 0
    (dead,) = await drain_queue(fleet, dlq)
    assert dead["MessageAttributes"]["fleet.error-code"]["StringValue"] == "TIMEOUT"


async def test_work_in_a_thread_never_overlaps_its_own_retry(fleet: Services) -> None:
    # Given a handler whose work runs 3 s in a thread, under a 0.3 s handler timeout
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def blocking_work() -> None:
        start = time.monotonic()
        time.sleep(3)
        with lock:
            spans.append((start, time.monotonic()))

    async def in_thread(job: Job, ctx: Context) -> None:
        await asyncio.to_thread(blocking_work)

    # When the worker retries it after each timeout (backoff 1 s), twice
    await run_burst(
        ScriptedStage(in_thread), fleet, fast_tuning(max_attempts=2, handler_timeout=0.3, backoff_base=1), timeout=60
    )

    # Then the second run's thread started only after the first run's thread had finished
    await wait_until(lambda: len(spans) == 2, timeout=10)
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end, spans


# --- 8. CloudWatch metrics are flushed on a timer and at shutdown ------------------------------------------


async def test_cloudwatch_metrics_are_flushed_by_an_idle_worker(fleet: Services) -> None:
    # Given metrics in cloudwatch mode flushed every 0.5 s, and one metric emitted, then nothing
    namespace = "FleetIdle" + fleet.settings.prefix
    metrics = Metrics("cloudwatch", namespace, cloudwatch=fleet.aws.cloudwatch, flush_every=0.5)
    metrics.start()
    try:
        await metrics.emit(Metric("Widgets", 1, "Count", {"Worker": "echo"}))

        # When nothing else is emitted for a while
        async def listed() -> list[str]:
            resp = await fleet.aws.cloudwatch.list_metrics(Namespace=namespace)
            return [m["MetricName"] for m in resp["Metrics"]]

        deadline = time.monotonic() + 10
        names: list[str] = []
        while not names and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            names = await listed()
    finally:
        await metrics.close()

    # Then the buffered metric reached CloudWatch without a further emit
    assert names == ["Widgets"]


async def test_cloudwatch_metrics_are_flushed_at_shutdown(fleet: Services) -> None:
    # Given a metric emitted with a flush interval far in the future
    namespace = "FleetStop" + fleet.settings.prefix
    metrics = Metrics("cloudwatch", namespace, cloudwatch=fleet.aws.cloudwatch, flush_every=3600)
    metrics.start()
    await metrics.emit(Metric("Widgets", 1, "Count", {"Worker": "echo"}))
    # When the sink is closed (process shutdown), Then it is flushed
    await metrics.close()
    resp = await fleet.aws.cloudwatch.list_metrics(Namespace=namespace)
    assert [m["MetricName"] for m in resp["Metrics"]] == ["Widgets"]


# --- suspected: a heartbeat that finds its message gone stops the handler --------------------------------


async def test_a_handler_whose_message_is_gone_is_stopped_and_not_reported_a_success(
    fleet: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a long handler whose message is deleted from under it (another consumer, an operator's purge)
    caplog.set_level(logging.INFO, logger="fleet")
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    finished: list[bool] = []

    async def long(job: Job, ctx: Context) -> None:
        await fleet.aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=ctx.message.receipt_handle)
        await asyncio.sleep(5)
        finished.append(True)

    worker = await Worker.create(
        ScriptedStage(long), fleet, queue=ECHO, tuning=fast_tuning(visibility_timeout=3, heartbeat_interval=0.5)
    )
    task = asyncio.create_task(worker.run())

    # When the heartbeat next tries to extend it
    await wait_until(lambda: worker.stats.lost == 1, timeout=20)
    worker.stop()
    await asyncio.wait_for(task, 30)

    # Then the handler was cancelled, and the message reported lost, not succeeded
    assert finished == [] and worker.stats.succeeded == 0
    assert any(r.getMessage() == "message lost: stopped its handler" for r in caplog.records)


# --- suspected: burst mode survives a failed queue-empty check ---------------------------------------------


async def test_burst_mode_survives_a_failing_queue_empty_check(fleet: Services, aws_endpoint: str) -> None:
    # Given the worker's queue-empty check (GetQueueAttributes) failing twice
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": 1}])
    with FaultProxy(aws_endpoint) as proxy:
        emptiness_check = sqs_action("GetQueueAttributes")
        rule = proxy.add(
            Rule(
                "emptiness check",
                lambda r: emptiness_check(r) and b"ApproximateNumberOfMessages" in r.body,
                times=2,
                status=403,
                code="AccessDenied",
            )
        )
        async with through(proxy, fleet) as proxied:
            # When the worker runs in burst mode
            worker = await run_burst(ScriptedStage(), proxied, fast_tuning(), timeout=60)

    # Then it kept going and finished normally once the check worked
    assert rule.faulted == 2 and worker.stats.succeeded == 1


# --- suspected: `fleet health` turns red while every poll fails -------------------------------------------


async def test_health_is_red_while_every_poll_fails(fleet: Services, aws_endpoint: str) -> None:
    # Given ReceiveMessage failing for the worker, every time
    with FaultProxy(aws_endpoint) as proxy:
        proxy.add(Rule("receive", sqs_action("ReceiveMessage"), status=403, code="AccessDenied"))
        async with through(proxy, fleet) as proxied:
            worker = await Worker.create(ScriptedStage(), proxied, queue=ECHO, tuning=fast_tuning())
            task = asyncio.create_task(worker.run())

            # When it has tried a few polls
            await wait_until(lambda: worker.stats.polls >= 3, timeout=30)
            await asyncio.sleep(5.5)  # the health file is rewritten every 5 s
            ok, detail = check_health(fleet.settings.health_dir, "echo")
            worker.stop()
            await asyncio.wait_for(task, 30)

    # Then the health check is red, saying why
    assert health_path(fleet.settings.health_dir, "echo").exists()
    assert not ok and "poll" in detail, detail
