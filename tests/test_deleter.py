"""Batched deletes: one bad receipt does not stop the others."""

from __future__ import annotations

import asyncio

from shared.deleter import BatchDeleter
from shared.stage import Services
from tests.helpers import drain_queue, queue_urls, send


async def test_batched_deletes_handle_per_entry_failures(fleet: Services) -> None:
    # Given three received messages and one receipt handle that is not valid
    url, _ = await queue_urls(fleet)
    await send(fleet, url, [{"n": i} for i in range(3)])
    resp = await fleet.aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1)
    handles = [m["ReceiptHandle"] for m in resp["Messages"]]
    assert len(handles) == 3
    deleter = BatchDeleter(fleet.aws.sqs, url, linger=0.05)
    deleter.start()

    # When all four are deleted concurrently (so they share one batch)
    results = await asyncio.gather(*(deleter.delete(h) for h in [*handles, "not-a-receipt"]))
    await deleter.close()

    # Then the real ones are gone and only the bad one is reported failed
    assert results == [True, True, True, False]
    assert deleter.deleted == 3 and deleter.failed == 1
    await asyncio.sleep(1.1)
    assert await drain_queue(fleet, url, wait=0) == []
