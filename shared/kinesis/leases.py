"""Shard leases and checkpoints in `fleet-leases`, one item per (application, stream, shard).

Every change is one conditional write, so two workers can never both believe they took a lease:

- `take`: on condition that the lease counter is still the value the taker saw (free, expired or stolen
  leases alike), set the owner and bump the counter;
- `renew`: bump the counter, on condition that the owner is still me (a renewal that fails means the lease
  was taken: stop reading that shard at once);
- `checkpoint`: set the checkpoint, on condition that the owner is still me and the shard is not finished;
- `release`: remove the owner (SIGTERM hand-back), on condition that it is still me;
- `finish`: checkpoint `SHARD_END` and release: the shard's children may now be read.

Expiry is judged as KCL does, without trusting clocks across machines: a lease whose counter has not moved
for `lease_seconds` of the observer's own time is expired (`shared/kinesis/balance.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import is_conditional_failure, written

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
SHARD_END = "SHARD_END"
BATCH_GET = 100  # BatchGetItem's limit
NAMES = {"#o": "owner", "#c": "counter", "#k": "checkpoint"}  # reserved words in DynamoDB expressions


@dataclass(frozen=True)
class Lease:
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: str  # TRIM_HORIZON, LATEST, SHARD_END or the last sequence number whose effects are durable
    parents: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _lease(shard_id: str, item: dict[str, Any]) -> Lease:
    owner = item.get("owner", {}).get("S")
    parents = tuple(p["S"] for p in item.get("parents", {}).get("L", []))
    return Lease(
        shard_id=shard_id,
        owner=owner or None,
        counter=int(item.get("counter", {}).get("N", "0")),
        checkpoint=item.get("checkpoint", {}).get("S", TRIM_HORIZON),
        parents=parents,
    )


class LeaseStore:
    def __init__(self, dynamodb: DynamoDBClient, table: str, *, app: str, stream: str) -> None:
        self._ddb = dynamodb
        self.table = table
        self.app = app
        self.stream = stream

    def key(self, shard_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"kinesis#{self.app}#{self.stream}#{shard_id}"}}

    async def ensure(self, shard_id: str, parents: Iterable[str], initial: str) -> bool:
        """Create the shard's lease if it has none (True if this call created it)."""
        return await written(
            self._ddb.put_item,
            TableName=self.table,
            Item={
                **self.key(shard_id),
                "kind": {"S": "kinesis-lease"},
                "app": {"S": self.app},
                "stream": {"S": self.stream},
                "shard_id": {"S": shard_id},
                "counter": {"N": "0"},
                "checkpoint": {"S": initial},
                "parents": {"L": [{"S": p} for p in parents]},
                "updated_at": {"S": _now()},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    async def load(self, shard_ids: Iterable[str]) -> dict[str, Lease]:
        """The current leases of these shards (consistent reads); shards without a lease are absent."""
        wanted = {self.key(s)["pk"]["S"]: s for s in shard_ids}
        keys = [{"pk": {"S": pk}} for pk in wanted]
        out: dict[str, Lease] = {}
        for start in range(0, len(keys), BATCH_GET):
            request: Any = {self.table: {"Keys": keys[start : start + BATCH_GET], "ConsistentRead": True}}
            while request:
                resp = await self._ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    shard_id = wanted[item["pk"]["S"]]
                    out[shard_id] = _lease(shard_id, item)
                request = resp.get("UnprocessedKeys") or None
        return out

    def _request(self, shard_id: str, expression: str, condition: str, values: dict[str, Any]) -> dict[str, Any]:
        used = {k: v for k, v in NAMES.items() if k in expression or k in condition}
        return {
            "TableName": self.table,
            "Key": self.key(shard_id),
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": used,
            "ExpressionAttributeValues": {**values, ":at": {"S": _now()}},
        }

    async def _maybe(self, shard_id: str, expression: str, condition: str, values: dict[str, Any]) -> Lease | None:
        """The lease after a conditional update; None if its condition failed."""
        try:
            resp = await self._ddb.update_item(
                **self._request(shard_id, expression, condition, values), ReturnValues="ALL_NEW"
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return None
            raise
        return _lease(shard_id, resp["Attributes"])

    async def _write(self, shard_id: str, expression: str, condition: str, values: dict[str, Any]) -> bool:
        return await written(self._ddb.update_item, **self._request(shard_id, expression, condition, values))

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take a lease seen free, expired or held by another (a steal); None if it moved since it was seen."""
        return await self._maybe(
            lease.shard_id,
            "SET #o = :me, #c = #c + :one, updated_at = :at",
            "#c = :seen AND #k <> :end",
            {":me": {"S": owner}, ":one": {"N": "1"}, ":seen": {"N": str(lease.counter)}, ":end": {"S": SHARD_END}},
        )

    async def renew(self, shard_id: str, owner: str) -> Lease | None:
        """Bump the counter of a lease I hold; None if it is no longer mine."""
        return await self._maybe(
            shard_id, "SET #c = #c + :one, updated_at = :at", "#o = :me", {":me": {"S": owner}, ":one": {"N": "1"}}
        )

    async def checkpoint(self, shard_id: str, owner: str, sequence_number: str) -> bool:
        return await self._write(
            shard_id,
            "SET #k = :seq, updated_at = :at",
            "#o = :me AND #k <> :end",
            {":me": {"S": owner}, ":seq": {"S": sequence_number}, ":end": {"S": SHARD_END}},
        )

    async def release(self, shard_id: str, owner: str) -> bool:
        """Give a lease back at once: another worker may take it on its next look, without waiting for expiry."""
        return await self._write(
            shard_id,
            "REMOVE #o SET #c = #c + :one, updated_at = :at",
            "#o = :me",
            {":me": {"S": owner}, ":one": {"N": "1"}},
        )

    async def finish(self, shard_id: str, owner: str) -> bool:
        """The shard is read to its end and every effect is durable: its children may start."""
        return await self._write(
            shard_id,
            "SET #k = :end, #c = #c + :one, updated_at = :at REMOVE #o",
            "#o = :me",
            {":me": {"S": owner}, ":one": {"N": "1"}, ":end": {"S": SHARD_END}},
        )
