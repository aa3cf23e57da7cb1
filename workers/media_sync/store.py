"""`fleet-sync`: one item per media, keyed `media_id`.

Contract fields: `status` (IN_PROGRESS | COMPLETED | FAILED | DELETED), `bytes`, `s3_key`, `updated_at`,
`error`. Also kept: `sha256`, `size`, `filename`, and while a transfer runs its lease (`owner`,
`lease_until`, renewed as the message's visibility is) and its open multipart upload (`upload_id`,
`upload_key`, `part_size`, `source_etag`, `source_modified`) so that a retry can resume it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from shared.errors import Transient, owned, written

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = logging.getLogger("fleet.media_sync")

BATCH_GET_MAX = 100  # DynamoDB's limit per BatchGetItem
UPLOAD_FIELDS = ("upload_id", "upload_key", "part_size", "source_etag", "source_modified")

_ser = TypeSerializer()
_de = TypeDeserializer()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in item.items():
        value = _de.deserialize(raw)
        if isinstance(value, Decimal):
            value = int(value) if value == value.to_integral_value() else float(value)
        out[key] = value
    return out


class SyncStore:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        *,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self._ddb = dynamodb
        self.table = table
        self.retries = retries
        self.backoff = backoff

    # --- sync: who still needs a download ---------------------------------------------------------

    async def statuses(self, media_ids: Iterable[str]) -> dict[str, str]:
        """`media_id -> status` for the ids that have an item, in BatchGetItem calls of 100 keys.

        `UnprocessedKeys` are retried with exponential backoff (the seed's 1 s, 2 s, 4 s); keys still
        unprocessed after that fail the call (Transient), never count as "not synced"."""
        ids = list(dict.fromkeys(media_ids))
        chunks = [ids[i : i + BATCH_GET_MAX] for i in range(0, len(ids), BATCH_GET_MAX)]
        found: dict[str, str] = {}
        for part in await asyncio.gather(*(self._batch(chunk) for chunk in chunks)):
            found.update(part)
        return found

    async def _batch(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        request: dict[str, Any] = {
            self.table: {
                "Keys": [{"media_id": {"S": i}} for i in ids],
                "ProjectionExpression": "media_id, #s",
                "ExpressionAttributeNames": {"#s": "status"},
                "ConsistentRead": True,
            }
        }
        delay = self.backoff
        for attempt in range(self.retries + 1):
            resp = await self._ddb.batch_get_item(RequestItems=request)
            for item in resp.get("Responses", {}).get(self.table, []):
                found[item["media_id"]["S"]] = item.get("status", {}).get("S", "")
            unprocessed: dict[str, Any] = dict(resp.get("UnprocessedKeys") or {})
            if not unprocessed.get(self.table, {}).get("Keys"):
                return found
            if attempt < self.retries:
                log.info("BatchGetItem left keys unprocessed; backing off", extra={"delay_s": delay})
                await asyncio.sleep(delay)
                delay *= 2
                request = dict(unprocessed)
        left = len(request[self.table]["Keys"])
        raise Transient(
            f"BatchGetItem: {left} keys still unprocessed after {self.retries} retries", code="DDB_THROTTLED"
        )

    # --- download: one item through its states ----------------------------------------------------

    async def get(self, media_id: str) -> dict[str, Any] | None:
        resp = await self._ddb.get_item(TableName=self.table, Key={"media_id": {"S": media_id}}, ConsistentRead=True)
        item = resp.get("Item")
        return _plain(item) if item else None

    async def claim(self, media_id: str, owner: str, lease_seconds: float, **fields: Any) -> bool:
        """IN_PROGRESS under our lease, unless another live transfer holds it."""
        now = time.time()
        values = {"status": "IN_PROGRESS", "owner": owner, "lease_until": now + lease_seconds, **fields}
        names, sets, vals = self._set(values)
        vals[":now"] = _ser.serialize(_decimal(now))
        vals[":ip"] = {"S": "IN_PROGRESS"}
        names["#error"] = "error"
        return await written(
            self._ddb.update_item,
            # a retried claim whose first try took effect finds its own lease: still ours
            mine=owned("owner", owner, status="IN_PROGRESS"),
            TableName=self.table,
            Key={"media_id": {"S": media_id}},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE #error",
            ConditionExpression="attribute_not_exists(media_id) OR #status <> :ip OR #lease_until < :now",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=vals,
        )

    async def update(self, media_id: str, owner: str, *, remove: Iterable[str] = (), **fields: Any) -> bool:
        """Write fields while we still hold the lease; False when another worker has taken it over."""
        names, sets, vals = self._set(fields)
        removes = [f"#{k}" for k in remove]
        names.update({f"#{k}": k for k in remove})
        names["#owner"] = "owner"
        vals[":me"] = {"S": owner}
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        return await written(
            self._ddb.update_item,
            TableName=self.table,
            Key={"media_id": {"S": media_id}},
            UpdateExpression=expression,
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=vals,
        )

    async def renew(self, media_id: str, owner: str, lease_seconds: float) -> bool:
        return await self.update(media_id, owner, lease_until=time.time() + lease_seconds)

    async def finish(self, media_id: str, owner: str, status: str, **fields: Any) -> bool:
        """A final state: the lease and the upload bookkeeping go."""
        return await self.update(media_id, owner, remove=("lease_until", *UPLOAD_FIELDS), status=status, **fields)

    @staticmethod
    def _set(values: dict[str, Any]) -> tuple[dict[str, str], list[str], dict[str, Any]]:
        values = {**values, "updated_at": now_iso()}
        names = {f"#{k}": k for k in values}
        sets = [f"#{k} = :{k}" for k in values]
        vals = {f":{k}": _ser.serialize(_decimal(v)) for k, v in values.items()}
        return names, sets, vals


def _decimal(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(round(value, 3)))
    return value
