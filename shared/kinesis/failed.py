"""The failed-records location: a record its stage cannot parse goes to the worker's DLQ, with where it
came from, and the rest of its batch goes on (the intent of Lambda's bisect-on-error, without losing the
batch). `fleet dlq NAME` shows it; `fleet dlq NAME --redrive` puts it on the worker's queue once fixed.

Attributes: `fleet.error`, `fleet.error-code`, `fleet.worker`, `fleet.source-stream`, `fleet.shard-id`,
`fleet.sequence-number`, `fleet.partition-key`, and `fleet.encoding: base64` when the data is not UTF-8.
A record is sent before its shard's checkpoint may pass it; a send that fails is retried, never skipped.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING

from shared import attributes as attrs
from shared.errors import FleetError
from shared.kinesis.records import StreamRecord
from shared.settler import MAX_MESSAGE_BYTES, string

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageAttributeValueTypeDef

log = logging.getLogger("fleet.kinesis")

SOURCE_STREAM = "fleet.source-stream"
SHARD_ID = "fleet.shard-id"
SEQUENCE_NUMBER = "fleet.sequence-number"
PARTITION_KEY = "fleet.partition-key"
ENCODING = "fleet.encoding"
ATTRIBUTE_ROOM = 8 * 1024  # what the attributes may take of SQS's message size


class FailedRecords:
    def __init__(self, sqs: SQSClient, dlq_url: str | None, *, worker: str, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._sqs = sqs
        self.dlq_url = dlq_url
        self.worker = worker
        self.max_bytes = max_bytes

    async def send(self, record: StreamRecord, error: FleetError, *, stop: asyncio.Event | None = None) -> None:
        """Record a failed record; retries until it is sent (or `stop` is set: then the record is read again)."""
        where = {"shard_id": record.shard_id, "sequence_number": record.sequence_number, "error": error.reason[:300]}
        if self.dlq_url is None:
            log.error("failed record (no DLQ configured: kept in this log only)", extra=where)
            return
        body, encoding = _body(record.data)
        limit = self.max_bytes - ATTRIBUTE_ROOM
        if len(body.encode()) > limit:
            log.error("failed record too large for the DLQ: its body is cut; read it from the stream", extra=where)
            body = body.encode()[:limit].decode("utf-8", "ignore")
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            attrs.ERROR: string(error.reason[:1000]),
            attrs.ERROR_CODE: string(error.code),
            attrs.WORKER: string(self.worker),
            SOURCE_STREAM: string(record.stream),
            SHARD_ID: string(record.shard_id),
            SEQUENCE_NUMBER: string(record.sequence_number),
            PARTITION_KEY: string(record.partition_key[:256]),
        }
        if encoding:
            attributes[ENCODING] = string(encoding)
        delay = 0.5
        while True:
            try:
                await self._sqs.send_message(QueueUrl=self.dlq_url, MessageBody=body, MessageAttributes=attributes)
            except Exception as exc:
                log.warning("could not record a failed record; retrying", extra={**where, "send_error": str(exc)})
                if stop is not None and stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            log.warning("record sent to the failed-records queue", extra=where)
            return


def _body(data: bytes) -> tuple[str, str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"
    return (text, "") if text else ("-", "")  # SQS refuses an empty body
