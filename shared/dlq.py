"""Looking into a dead-letter queue and moving its messages back.

Both read the DLQ with a visibility timeout that keeps each message hidden while they work, and give back
what they did not consume. A message dead-lettered twice (its delete failed after the DLQ send) shares its
`fleet.source-message-id` with its twin: it is shown, and redriven, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import attributes as attrs
from shared.settler import sendable

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

HIDE_SECONDS = 300  # long enough for any redrive to finish with each message it received


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    source_message_id: str
    error: str
    code: str
    worker: str
    attempts: str
    body: str
    copies: int = 1


def _attr(raw: MessageTypeDef, name: str) -> str:
    value = dict(raw.get("MessageAttributes", {})).get(name)
    return str(value.get("StringValue", "")) if value else ""


def source_id(raw: MessageTypeDef) -> str:
    return _attr(raw, attrs.SOURCE_MESSAGE_ID) or raw["MessageId"]


async def _receive(sqs: SQSClient, url: str, hide: int) -> list[MessageTypeDef]:
    resp = await sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        VisibilityTimeout=hide,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["SentTimestamp"],
    )
    return list(resp.get("Messages", []))


async def _show_again(sqs: SQSClient, url: str, handles: list[str]) -> None:
    for start in range(0, len(handles), 10):
        entries: Any = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start : start + 10])
        ]
        await sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)


async def peek(sqs: SQSClient, dlq_url: str, limit: int = 50) -> list[DeadLetter]:
    """Up to `limit` dead letters (one per source message), without consuming them."""
    seen: dict[str, DeadLetter] = {}
    handles: list[str] = []
    try:
        while len(seen) < limit:
            batch = await _receive(sqs, dlq_url, 30)
            if not batch:
                break
            for raw in batch:
                handles.append(raw["ReceiptHandle"])
                key = source_id(raw)
                if key in seen:
                    seen[key] = DeadLetter(**{**vars(seen[key]), "copies": seen[key].copies + 1})
                    continue
                seen[key] = DeadLetter(
                    message_id=raw["MessageId"],
                    source_message_id=key,
                    error=_attr(raw, attrs.ERROR),
                    code=_attr(raw, attrs.ERROR_CODE),
                    worker=_attr(raw, attrs.WORKER),
                    attempts=_attr(raw, attrs.ATTEMPTS),
                    body=raw.get("Body", ""),
                )
    finally:
        await _show_again(sqs, dlq_url, handles)
    return list(seen.values())[:limit]


async def redrive(
    sqs: SQSClient,
    dlq_url: str,
    source_url: str,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Move what the DLQ held when the redrive started back to its source queue, each source message once,
    then stop. Returns how many were moved.

    A message that fails again while the redrive runs comes back to the DLQ as a new message, sent after
    the start: it is left there for the next redrive, never moved again in this one, so a redrive always
    ends. Each message is sent before it is deleted: a crash in between duplicates, never loses.
    """
    started = time.time()
    moved = 0
    moved_sources: set[str] = set()
    later: list[str] = []  # received but not ours to move now: shown again at the end
    try:
        while limit is None or moved < limit:
            batch = await _receive(sqs, dlq_url, HIDE_SECONDS)
            if not batch:
                break
            for raw in batch:
                sent = int(raw.get("Attributes", {}).get("SentTimestamp", "0")) / 1000
                key = source_id(raw)
                if sent > started or (limit is not None and moved >= limit):
                    later.append(raw["ReceiptHandle"])
                    continue
                if key not in moved_sources:
                    theirs = sendable(dict(raw.get("MessageAttributes", {})))
                    kept = {k: v for k, v in theirs.items() if k not in attrs.RUNTIME}
                    kwargs: Any = {"MessageAttributes": kept} if kept else {}
                    await sqs.send_message(QueueUrl=source_url, MessageBody=raw.get("Body", ""), **kwargs)
                    moved_sources.add(key)
                    moved += 1
                    if progress:
                        progress(moved)
                # moved now, or a twin of one moved: either way it leaves the DLQ
                await sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=raw["ReceiptHandle"])
    finally:
        await _show_again(sqs, dlq_url, later)
    return moved
