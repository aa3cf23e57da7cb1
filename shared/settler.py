"""The SQS calls that apply a message's fate (`shared/fate.py`): delete, delay, dead-letter, release.

Each returns True once SQS confirmed it, False if SQS refused or never answered; the runtime reports a
False as what it is (the message will be delivered again), never as the outcome it wanted.

Release re-sends. A message released at shutdown (drain, scale-in, deploy) is sent again as a new copy
carrying `fleet.failures` and `fleet.origin-id`, then the received copy is deleted: SQS's receive count starts
again, so releases never use up attempts nor trip the queue's redrive policy. The cost is two calls per
release instead of one, and, if the delete of the old copy fails, one duplicate delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import attributes as attrs
from shared.deleter import BatchDeleter
from shared.errors import FleetError
from shared.stage import Message

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageAttributeValueTypeDef

log = logging.getLogger("fleet.runtime")

REASON_LIMIT = 1000
SHORT_REASON = 100
MAX_MESSAGE_BYTES = 1024 * 1024  # SQS's limit, body and attributes together


class DeadLetterRefused(Exception):
    """The DLQ did not take the message: it stays on its queue, where SQS's redrive policy is the net."""


def string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value or "-"}


def number(value: int) -> MessageAttributeValueTypeDef:
    return {"DataType": "Number", "StringValue": str(value)}


def sendable(attributes: dict[str, Any]) -> dict[str, MessageAttributeValueTypeDef]:
    """Received attributes in the shape SendMessage takes (received ones carry extra list fields)."""
    out: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in attributes.items():
        if not isinstance(value, dict) or "DataType" not in value:
            continue
        if "StringValue" in value:
            out[name] = {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        elif "BinaryValue" in value:
            out[name] = {"DataType": value["DataType"], "BinaryValue": value["BinaryValue"]}
    return out


def attribute_bytes(name: str, value: MessageAttributeValueTypeDef) -> int:
    """What an attribute counts towards SQS's message size: name, type and value."""
    payload = value.get("StringValue")
    size = len(payload.encode()) if isinstance(payload, str) else len(bytes(value.get("BinaryValue", b"")))  # type: ignore[arg-type]
    return len(name.encode()) + len(value["DataType"].encode()) + size


@dataclass(frozen=True)
class DeadLetterAttributes:
    attributes: dict[str, MessageAttributeValueTypeDef]
    dropped: tuple[str, ...]  # the producer's attributes that did not fit


def dead_letter_attributes(
    message: Message, error: FleetError, *, worker: str, source_queue: str, max_bytes: int = MAX_MESSAGE_BYTES
) -> DeadLetterAttributes:
    """The dead letter's attributes: ours, then as many of the producer's as fit SQS's count and size limits.

    A body near the limit leaves little room: the reason is shortened first, then the producer's attributes
    are dropped (the job id last) and named in the log. Raises DeadLetterRefused if even that cannot fit.
    """
    ours: dict[str, MessageAttributeValueTypeDef] = {
        attrs.ERROR: string(error.reason[:REASON_LIMIT]),
        attrs.ERROR_CODE: string(error.code),
        attrs.WORKER: string(worker),
        attrs.ATTEMPTS: number(message.attempt),
        attrs.SOURCE_QUEUE: string(source_queue),
        attrs.SOURCE_MESSAGE_ID: string(message.origin_id),
    }
    theirs = {k: v for k, v in sendable(message.attributes).items() if k not in attrs.RUNTIME}
    # The job id is what ties a dead letter to its job: keep it longest.
    order = sorted(theirs, key=lambda k: k == attrs.JOB_ID, reverse=True)
    kept = {k: theirs[k] for k in order[: attrs.MAX_ATTRIBUTES - len(ours)]}
    body = len(message.body.encode())

    def size() -> int:
        return body + sum(attribute_bytes(k, v) for k, v in {**kept, **ours}.items())

    if size() > max_bytes:
        ours[attrs.ERROR] = string(error.reason[:SHORT_REASON])
    while size() > max_bytes and kept:
        kept.pop(next(reversed(kept)))  # the job id, first in order, goes last
    if size() > max_bytes:
        raise DeadLetterRefused(f"a {body}-byte body leaves no room for the dead letter's attributes")
    return DeadLetterAttributes({**kept, **ours}, tuple(k for k in theirs if k not in kept))


class Settler:
    def __init__(
        self,
        sqs: SQSClient,
        *,
        queue_url: str,
        dlq_url: str,
        worker: str,
        dlq_max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._dlq_url = dlq_url
        self._worker = worker
        self._queue_name = queue_url.rsplit("/", 1)[-1]
        self.dlq_max_bytes = dlq_max_bytes
        self.deleter = BatchDeleter(sqs, queue_url)

    def start(self) -> None:
        self.deleter.start()

    async def close(self, within: float) -> None:
        await self.deleter.close(within)

    async def delete(self, message: Message) -> bool:
        return await self.deleter.delete(message.receipt_handle)

    async def retry(self, message: Message, delay: int) -> bool:
        return await self._visibility(message, delay)

    async def dead_letter(self, message: Message, error: FleetError) -> bool:
        """Send to the DLQ (raises DeadLetterRefused if it will not take it), then delete from the queue."""
        letter = dead_letter_attributes(
            message, error, worker=self._worker, source_queue=self._queue_name, max_bytes=self.dlq_max_bytes
        )
        if letter.dropped:
            log.warning("dead letter too large for all its attributes", extra={"dropped": list(letter.dropped)})
        try:
            await self._sqs.send_message(
                QueueUrl=self._dlq_url, MessageBody=message.body, MessageAttributes=letter.attributes
            )
        except Exception as exc:
            raise DeadLetterRefused(str(exc)) from exc
        return await self.delete(message)

    async def release(self, message: Message) -> bool:
        """Give an unhandled message back at once, without using up an attempt (see the module's docstring)."""
        copy = {k: v for k, v in sendable(message.attributes).items() if k not in (attrs.FAILURES, attrs.ORIGIN_ID)}
        copy[attrs.FAILURES] = number(message.failures + max(0, message.receive_count - 1))
        copy[attrs.ORIGIN_ID] = string(message.origin_id)
        if len(copy) <= attrs.MAX_ATTRIBUTES:
            try:
                await self._sqs.send_message(QueueUrl=self._url, MessageBody=message.body, MessageAttributes=copy)
            except Exception as exc:
                log.warning("release by re-sending failed; making it visible instead", extra={"error": str(exc)})
            else:
                if not await self.delete(message):
                    log.error("released copy sent, but the original's delete failed: it will run twice")
                return True
        # No room for our attributes (or SQS refused the copy): visible at once, at the cost of one receive.
        return await self._visibility(message, 0)

    async def _visibility(self, message: Message, seconds: int) -> bool:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds
            )
        except Exception as exc:
            log.warning("could not change visibility", extra={"error": str(exc), "visibility_s": seconds})
            return False
        return True
