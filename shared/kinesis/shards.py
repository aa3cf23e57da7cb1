"""A stream's shards as Kinesis lists them, parents included (what reshard discovery needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import error_code

if TYPE_CHECKING:
    from types_aiobotocore_kinesis import KinesisClient


@dataclass(frozen=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...] = ()  # ParentShardId and AdjacentParentShardId (a merge has two)
    closed: bool = False  # has an EndingSequenceNumber: no new records after a reshard (on real Kinesis)


def _shard(raw: Any) -> Shard:
    parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
    ending = raw.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    return Shard(raw["ShardId"], parents, ending is not None)


async def list_shards(kinesis: KinesisClient, stream: str) -> list[Shard]:
    """Every shard of the stream, following pages.

    AWS wants `NextToken` alone on later pages; moto also wants `StreamName` with it. Send AWS's form first
    and, only if it is refused as invalid, the emulator's.
    """
    resp = await kinesis.list_shards(StreamName=stream)
    shards = [_shard(s) for s in resp.get("Shards", [])]
    token = resp.get("NextToken")
    while token:
        try:
            resp = await kinesis.list_shards(NextToken=token)
        except ClientError as exc:
            if error_code(exc) not in ("InvalidArgumentException", "ValidationException", "ResourceNotFoundException"):
                raise
            resp = await kinesis.list_shards(NextToken=token, StreamName=stream)
        shards += [_shard(s) for s in resp.get("Shards", [])]
        token = resp.get("NextToken")
    return sorted({s.shard_id: s for s in shards}.values(), key=lambda s: s.shard_id)
