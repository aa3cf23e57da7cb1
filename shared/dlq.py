"""Looking into a dead-letter queue and moving its messages back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

FLEET_ATTRIBUTES = ("fleet.error", "fleet.error-code", "fleet.worker", "fleet.attempts", "fleet.source-queue")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    error: str
    code: str
    worker: str
    attempts: str
    body: str


def _attr(raw: MessageTypeDef, name: str) -> str:
    value = dict(raw.get("MessageAttributes", {})).get(name)
    return str(value.get("StringValue", "")) if value else ""


async def peek(sqs: SQSClient, dlq_url: str, limit: int = 50) -> list[DeadLetter]:
    """Read up to `limit` dead letters without consuming them (each is made visible again at once)."""
    seen: dict[str, DeadLetter] = {}
    handles = []
    while len(seen) < limit:
        resp = await sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=30,
            MessageAttributeNames=["All"],
        )
        batch = resp.get("Messages", [])
        if not batch:
            break
        for raw in batch:
            handles.append(raw["ReceiptHandle"])
            seen[raw["MessageId"]] = DeadLetter(
                message_id=raw["MessageId"],
                error=_attr(raw, "fleet.error"),
                code=_attr(raw, "fleet.error-code"),
                worker=_attr(raw, "fleet.worker"),
                attempts=_attr(raw, "fleet.attempts"),
                body=raw.get("Body", ""),
            )
    for start in range(0, len(handles), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start : start + 10])
        ]
        await sqs.change_message_visibility_batch(QueueUrl=dlq_url, Entries=entries)  # type: ignore[arg-type]
    return list(seen.values())[:limit]


async def redrive(sqs: SQSClient, dlq_url: str, source_url: str, limit: int | None = None) -> int:
    """Move dead letters back to their source queue, without the fleet.* failure attributes.

    Each message is sent before it is deleted: a crash in between duplicates, never loses.
    """
    moved = 0
    while limit is None or moved < limit:
        resp = await sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        )
        batch = resp.get("Messages", [])
        if not batch:
            break
        for raw in batch:
            attrs: dict[str, Any] = {
                k: v for k, v in raw.get("MessageAttributes", {}).items() if k not in FLEET_ATTRIBUTES
            }
            kwargs = {"MessageAttributes": attrs} if attrs else {}
            await sqs.send_message(QueueUrl=source_url, MessageBody=raw.get("Body", ""), **kwargs)  # type: ignore[arg-type]
            await sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=raw["ReceiptHandle"])
            moved += 1
    return moved
