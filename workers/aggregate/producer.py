"""Putting events on the stream: `PutRecords` in chunks of at most 500 records and 5 MB, retrying the
records Kinesis refused (throttling) with backoff. Used by `fleet submit events` and the SQS feed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.errors import Transient

if TYPE_CHECKING:
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_kinesis.type_defs import PutRecordsRequestEntryTypeDef

log = logging.getLogger("fleet.aggregate")

MAX_RECORDS = 500
MAX_BYTES = 5 * 1024 * 1024
ATTEMPTS = 6


def chunks(records: Sequence[PutRecordsRequestEntryTypeDef]) -> list[list[PutRecordsRequestEntryTypeDef]]:
    out: list[list[PutRecordsRequestEntryTypeDef]] = []
    size = 0
    for r in records:
        data = r["Data"]
        n = (len(data) if isinstance(data, bytes | str) else MAX_BYTES) + len(r["PartitionKey"].encode())
        if not out or len(out[-1]) >= MAX_RECORDS or size + n > MAX_BYTES:
            out.append([])
            size = 0
        out[-1].append(r)
        size += n
    return out


async def put_records(
    kinesis: KinesisClient,
    stream: str,
    records: Sequence[PutRecordsRequestEntryTypeDef],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Put every record (in order within a partition key); returns their shard ids. Raises `Transient`
    if some are still refused after retrying."""
    shards: list[str] = [""] * len(records)
    offset = 0
    for chunk in chunks(records):
        todo = list(range(len(chunk)))
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
            resp = await kinesis.put_records(StreamName=stream, Records=[chunk[i] for i in todo])
            refused = []
            for i, result in zip(todo, resp["Records"], strict=True):
                if result.get("ErrorCode"):
                    refused.append(i)
                else:
                    shards[offset + i] = result.get("ShardId", "")
            if refused:
                log.info("Kinesis refused records; retrying them", extra={"refused": len(refused)})
            todo = refused
            if not todo:
                break
        if todo:
            raise Transient(f"Kinesis refused {len(todo)} records {ATTEMPTS} times", code="THROTTLED")
        offset += len(chunk)
        if progress:
            progress(len(chunk))
    return shards
