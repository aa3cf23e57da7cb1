"""Run a side effect at most once per key, guarded by a conditional put in `fleet-leases`.

    guard = Idempotency(services.aws.dynamodb, settings.name_of(LEASES))
    result = await guard.run(f"notify#{job_id}", send, lease_seconds=ctx.tuning.visibility_timeout)

- first caller: writes an IN_PROGRESS record that expires after `lease_seconds`, runs the function,
  stores its (JSON-able) result as COMPLETED;
- a later caller with the same key gets the stored result back without running anything;
- a caller that finds a live IN_PROGRESS record raises `Retry` (someone else is working on it now);
- an IN_PROGRESS record whose lease has expired (its worker crashed) is taken over — tie the lease to
  the queue's visibility timeout, so a crash never blocks a key for longer than a redelivery takes;
- if the function raises, the record is removed so the next attempt may run it again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from shared.declaration import uses
from shared.errors import Retry, is_conditional_failure
from shared.resources import LEASES

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

T = TypeVar("T")

COMPLETED_TTL = 7 * 24 * 3600  # how long a finished key is remembered


class AlreadyInProgress(Retry):
    code = "IN_PROGRESS"


class Idempotency:
    def __init__(self, dynamodb: DynamoDBClient, table: str, *, completed_ttl: int = COMPLETED_TTL) -> None:
        self._ddb = dynamodb
        self.table = table
        self.completed_ttl = completed_ttl

    async def run(self, key: str, fn: Callable[[], Awaitable[T]], *, lease_seconds: float) -> T:
        token = uuid.uuid4().hex
        now = time.time()
        try:
            await self._ddb.put_item(
                TableName=self.table,
                Item={
                    "pk": {"S": key},
                    "status": {"S": "IN_PROGRESS"},
                    "token": {"S": token},
                    "lease_expires": {"N": f"{now + lease_seconds:.3f}"},
                    "ttl": {"N": str(int(now + lease_seconds) + 3600)},
                },
                ConditionExpression="attribute_not_exists(pk) OR (#s = :p AND lease_expires < :now)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":p": {"S": "IN_PROGRESS"}, ":now": {"N": f"{now:.3f}"}},
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            stored: T = await self._existing(key)
            return stored
        try:
            result = await fn()
        except BaseException:
            await self._release(key, token)
            raise
        await self._complete(key, token, result)
        return result

    async def _existing(self, key: str) -> Any:
        resp = await self._ddb.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True)
        item = resp.get("Item", {})
        if item.get("status", {}).get("S") == "COMPLETED":
            return json.loads(item.get("result", {}).get("S", "null"))
        remaining = float(item.get("lease_expires", {}).get("N", "0")) - time.time()
        raise AlreadyInProgress(f"{key} is being processed elsewhere", delay=max(1.0, remaining))

    async def _complete(self, key: str, token: str, result: Any) -> None:
        await self._ddb.update_item(
            TableName=self.table,
            Key={"pk": {"S": key}},
            UpdateExpression="SET #s = :c, #r = :r, #t = :ttl REMOVE lease_expires",
            ConditionExpression="#tok = :tok",
            ExpressionAttributeNames={"#s": "status", "#r": "result", "#t": "ttl", "#tok": "token"},
            ExpressionAttributeValues={
                ":c": {"S": "COMPLETED"},
                ":r": {"S": json.dumps(result, default=str)},
                ":ttl": {"N": str(int(time.time()) + self.completed_ttl)},
                ":tok": {"S": token},
            },
        )

    async def _release(self, key: str, token: str) -> None:
        try:
            await self._ddb.delete_item(
                TableName=self.table,
                Key={"pk": {"S": key}},
                ConditionExpression="#tok = :tok",
                ExpressionAttributeNames={"#tok": "token"},
                ExpressionAttributeValues={":tok": {"S": token}},
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise


# What a worker that uses `Idempotency` declares (`WorkerSpec.uses`).
USES_LEASES = uses(LEASES, "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
