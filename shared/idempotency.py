"""Run a side effect at most once per key while its holder lives, guarded by a lease in `fleet-leases`.

    guard = Idempotency(services.aws.dynamodb, settings.name_of(LEASES))
    result = await guard.run(f"notify#{job_id}", send, lease_seconds=ctx.tuning.visibility_timeout)

- the first caller writes an IN_PROGRESS record with its token and a lease of `lease_seconds`, and renews
  the lease every third of it for as long as the side effect runs, however long that is: nobody else runs
  the side effect while its holder is alive;
- a later caller with the same key gets the stored (JSON-able) result back without running anything; one
  that finds a live lease raises `AlreadyInProgress` (a `Retry` after what is left of the lease);
- a holder that crashed stops renewing: its lease runs out within `lease_seconds` (tie it to the queue's
  visibility timeout), and the next caller takes the key over — no record stays "in progress" for ever;
- a holder that loses its lease (a renewal finds another token, or cannot renew before the lease runs out)
  has its side effect cancelled and raises `LeaseLost`: it learns it before it could report success;
- if the side effect raises, the record is removed so the next attempt may run it again. If it is
  cancelled (a drain, a timeout), the record stays until its lease runs out: the side effect may have
  happened, and only the lease's expiry may let someone run it again.

Every write recognises its own success after a lost reply (`shared.errors.written`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from shared.declaration import uses
from shared.errors import Retry, is_conditional_failure, owned, written
from shared.resources import LEASES

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = logging.getLogger("fleet.idempotency")

T = TypeVar("T")

COMPLETED_TTL = 7 * 24 * 3600  # how long a finished key is remembered
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"


class AlreadyInProgress(Retry):
    code = "IN_PROGRESS"


class LeaseLost(Retry):
    code = "LEASE_LOST"


def _n(value: float) -> dict[str, str]:
    return {"N": f"{value:.3f}"}


class Idempotency:
    def __init__(self, dynamodb: DynamoDBClient, table: str, *, completed_ttl: int = COMPLETED_TTL) -> None:
        self._ddb = dynamodb
        self.table = table
        self.completed_ttl = completed_ttl

    async def run(self, key: str, fn: Callable[[], Awaitable[T]], *, lease_seconds: float) -> T:
        token = uuid.uuid4().hex
        if not await self._acquire(key, token, lease_seconds):
            stored: T = await self._existing(key)
            return stored
        work = asyncio.ensure_future(fn())
        renewal = asyncio.create_task(self._renew(key, token, lease_seconds, work))
        try:
            result = await work
        except asyncio.CancelledError:
            if renewal.done() and renewal.result() is not None:
                raise LeaseLost(f"{key}: {renewal.result()}; its side effect was stopped") from None
            raise  # the side effect may have happened: keep the record until its lease runs out
        except Exception:
            await self._release(key, token)
            raise
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            if not work.done():
                work.cancel()
        await self._complete(key, token, result)
        return result

    async def _acquire(self, key: str, token: str, lease_seconds: float) -> bool:
        now = time.time()
        return await written(
            self._ddb.put_item,
            mine=owned("token", token),
            TableName=self.table,
            Item={
                "pk": {"S": key},
                "status": {"S": IN_PROGRESS},
                "token": {"S": token},
                "lease_expires": _n(now + lease_seconds),
                "ttl": {"N": str(int(now + lease_seconds) + 3600)},
            },
            ConditionExpression="attribute_not_exists(pk) OR (#s = :p AND lease_expires < :now)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":p": {"S": IN_PROGRESS}, ":now": _n(now)},
        )

    async def _renew(self, key: str, token: str, lease_seconds: float, work: asyncio.Future[Any]) -> str | None:
        """Extend the lease while `work` runs; cancel `work` and say why if the lease is lost."""
        confirmed_until = time.monotonic() + lease_seconds
        interval = max(0.2, lease_seconds / 3)
        while True:
            await asyncio.sleep(min(interval, max(0.0, confirmed_until - time.monotonic())))
            if time.monotonic() >= confirmed_until:
                reason = "the lease ran out before it could be renewed"
                break
            now, sent = time.time(), time.monotonic()
            try:
                kept = await written(
                    self._ddb.update_item,
                    mine=owned("token", token, status=IN_PROGRESS),
                    TableName=self.table,
                    Key={"pk": {"S": key}},
                    UpdateExpression="SET lease_expires = :until, #t = :ttl",
                    ConditionExpression="#tok = :tok AND #s = :p",
                    ExpressionAttributeNames={"#t": "ttl", "#tok": "token", "#s": "status"},
                    ExpressionAttributeValues={
                        ":until": _n(now + lease_seconds),
                        ":ttl": {"N": str(int(now + lease_seconds) + 3600)},
                        ":tok": {"S": token},
                        ":p": {"S": IN_PROGRESS},
                    },
                )
            except Exception as exc:
                log.warning("lease renewal failed; trying again", extra={"key": key, "error": str(exc)})
                continue
            if not kept:
                reason = "another worker holds the lease"
                break
            confirmed_until = sent + lease_seconds
        log.error("idempotency lease lost", extra={"key": key, "reason": reason})
        work.cancel()
        return reason

    async def _existing(self, key: str) -> Any:
        resp = await self._ddb.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True)
        item = resp.get("Item", {})
        if item.get("status", {}).get("S") == COMPLETED:
            return json.loads(item.get("result", {}).get("S", "null"))
        remaining = float(item.get("lease_expires", {}).get("N", "0")) - time.time()
        raise AlreadyInProgress(f"{key} is being processed elsewhere", delay=max(1.0, remaining))

    async def _complete(self, key: str, token: str, result: Any) -> None:
        done = await written(
            self._ddb.update_item,
            mine=owned("token", token, status=COMPLETED),
            TableName=self.table,
            Key={"pk": {"S": key}},
            UpdateExpression="SET #s = :c, #r = :r, #t = :ttl REMOVE lease_expires",
            ConditionExpression="#tok = :tok",
            ExpressionAttributeNames={"#s": "status", "#r": "result", "#t": "ttl", "#tok": "token"},
            ExpressionAttributeValues={
                ":c": {"S": COMPLETED},
                ":r": {"S": json.dumps(result, default=str)},
                ":ttl": {"N": str(int(time.time()) + self.completed_ttl)},
                ":tok": {"S": token},
            },
        )
        if not done:
            raise LeaseLost(f"{key}: another worker took the lease over before this one completed")

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
