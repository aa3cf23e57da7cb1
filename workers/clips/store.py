"""Clip items in `fleet-clips` (seed 002): key `pk` = `<tenantId>#<episodeId>`, `sk` = `clip#<clipId>`; the
episode item (`sk` = `episode`) holds the source's `videoKey`.

`statusHistory` is only ever appended to, with `list_append(if_not_exists(...))`. Each entry belongs to
one attempt of one message (`<first copy's message id>#<the runtime's attempt number>`; a copy re-sent when
the runtime released the message at shutdown continues its attempt), and the update that appends it
also adds `<status>|<attempt>` to the item's `historyKeys` set, on condition that the set does not hold it
yet. So a repeated write — botocore retrying after a lost reply, or the stage itself — finds its entry
already there and appends nothing: one entry per status per attempt, whatever the network did.

The In Progress write is also the clip's claim (`renderAttempt`, `renderMessage`, `renderUntil`), renewed
with each progress write. Another message for the same clip and request (a duplicated fan-out) waits
while a live claim holds; a redelivery of the same message (or a re-sent copy of it) takes the claim over at
once (its previous holder is gone or will find its claim lost), as does any claim left to expire.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import is_conditional_failure
from shared.jobs import from_item, now_iso, to_item

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

IN_PROGRESS = "Generation in Progress"
COMPLETE = "Generation Complete"
FAILED = "Generation Failed"


def episode_key(tenant_id: str, episode_id: str) -> dict[str, Any]:
    return to_item({"pk": f"{tenant_id}#{episode_id}", "sk": "episode"})


def clip_key(tenant_id: str, episode_id: str, clip_id: str) -> dict[str, Any]:
    return to_item({"pk": f"{tenant_id}#{episode_id}", "sk": f"clip#{clip_id}"})


def number(value: float) -> Decimal:
    """DynamoDB numbers go through boto3 as Decimal (it refuses floats); milliseconds are plenty."""
    return Decimal(str(round(value, 3)))


@dataclass(frozen=True)
class Attempt:
    tenant_id: str
    episode_id: str
    clip_id: str
    request_id: str  # the Begin Clip Generation event this render answers
    message_id: str  # the first copy's id (`Message.origin_id`)
    receive_count: int  # the runtime's attempt number (`Context.attempt`)

    @property
    def ident(self) -> str:
        return f"{self.message_id}#{self.receive_count}"

    @property
    def key(self) -> dict[str, Any]:
        return clip_key(self.tenant_id, self.episode_id, self.clip_id)


class Begin(Enum):
    STARTED = "started"  # this attempt holds the clip: render it
    DONE = "done"  # the clip is already complete for this request: nothing to do


@dataclass(frozen=True)
class Busy(Exception):
    """Another message's live claim holds the clip; try again after `seconds`."""

    seconds: float


class ClipStore:
    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    # --- reads -----------------------------------------------------------------------------------------

    async def episode(self, tenant_id: str, episode_id: str) -> dict[str, Any] | None:
        resp = await self._ddb.get_item(
            TableName=self.table, Key=episode_key(tenant_id, episode_id), ConsistentRead=True
        )
        return from_item(resp["Item"]) if "Item" in resp else None

    async def clip(self, tenant_id: str, episode_id: str, clip_id: str) -> dict[str, Any] | None:
        resp = await self._ddb.get_item(
            TableName=self.table, Key=clip_key(tenant_id, episode_id, clip_id), ConsistentRead=True
        )
        return from_item(resp["Item"]) if "Item" in resp else None

    async def clips(self, tenant_id: str, episode_id: str) -> AsyncIterator[dict[str, Any]]:
        """The episode's clip items, in key order."""
        paginator = self._ddb.get_paginator("query")
        async for page in paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :clip)",
            ExpressionAttributeValues=to_item({":pk": f"{tenant_id}#{episode_id}", ":clip": "clip#"}),
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                yield from_item(item)

    # --- writes ----------------------------------------------------------------------------------------

    async def begin(self, attempt: Attempt, *, lease_seconds: float) -> Begin:
        """Set In Progress and claim the clip for this attempt (once, however often it is called)."""
        now = time.time()
        entry_key = f"{IN_PROGRESS}|{attempt.ident}"
        try:
            await self._append(
                attempt,
                IN_PROGRESS,
                entry_key,
                {
                    "renderAttempt": attempt.ident,
                    "renderMessage": attempt.message_id,
                    "renderUntil": number(now + lease_seconds),
                    "requestId": attempt.request_id,
                    "tenantId": attempt.tenant_id,
                    "episodeId": attempt.episode_id,
                    "clipId": attempt.clip_id,
                    "progress": 0,
                },
                remove=("processingError",),
                condition=(
                    "(attribute_not_exists(renderUntil) OR renderUntil < :now OR renderMessage = :msg"
                    " OR requestId <> :req) AND NOT (requestId = :req AND #status = :complete)"
                ),
                values={
                    ":now": number(now),
                    ":msg": attempt.message_id,
                    ":req": attempt.request_id,
                    ":complete": COMPLETE,
                },
            )
        except _Refused as refused:
            old = refused.item
            if entry_key in old.get("historyKeys", set()):
                return Begin.STARTED  # our own earlier write (a lost reply): the claim is ours
            if old.get("status") == COMPLETE and old.get("requestId") == attempt.request_id:
                return Begin.DONE
            raise Busy(max(1.0, float(old.get("renderUntil", now)) - now)) from None
        return Begin.STARTED

    async def renew(self, attempt: Attempt, *, lease_seconds: float, progress: int) -> bool:
        """Extend this attempt's claim and record its progress; False if the claim was taken over."""
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=attempt.key,
                UpdateExpression="SET renderUntil = :until, progress = :p, updatedAt = :at",
                ConditionExpression="renderAttempt = :mine",
                ExpressionAttributeValues=to_item(
                    {
                        ":until": number(time.time() + lease_seconds),
                        ":p": progress,
                        ":at": now_iso(),
                        ":mine": attempt.ident,
                    }
                ),
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    async def complete(self, attempt: Attempt, result: dict[str, Any]) -> bool:
        """Set Generation Complete with the clip's metadata; False if another attempt holds the clip now."""
        return await self._finish(attempt, COMPLETE, {**result, "progress": 100})

    async def fail(self, attempt: Attempt, code: str, message: str) -> bool:
        """Set Generation Failed with `processingError {message, timestamp, code}`."""
        at = now_iso()
        error = {"message": message, "timestamp": at, "code": code}
        return await self._finish(attempt, FAILED, {"processingError": error}, entry={"error": message, "code": code})

    async def _finish(
        self, attempt: Attempt, status: str, fields: dict[str, Any], entry: dict[str, Any] | None = None
    ) -> bool:
        entry_key = f"{status}|{attempt.ident}"
        try:
            await self._append(
                attempt,
                status,
                entry_key,
                fields,
                entry=entry,
                remove=("renderUntil",),
                condition="renderAttempt = :mine",
                values={":mine": attempt.ident},
            )
        except _Refused as refused:
            return entry_key in refused.item.get("historyKeys", set())
        return True

    async def _append(
        self,
        attempt: Attempt,
        status: str,
        entry_key: str,
        fields: dict[str, Any],
        *,
        condition: str,
        values: dict[str, Any],
        entry: dict[str, Any] | None = None,
        remove: tuple[str, ...] = (),
    ) -> None:
        at = now_iso()
        history_entry = {"status": status, "timestamp": at, "attempt": attempt.receive_count, **(entry or {})}
        names = {"#status": "status", **{f"#f{i}": name for i, name in enumerate(fields)}}
        sets = [
            "#status = :status",
            "updatedAt = :at",
            "statusHistory = list_append(if_not_exists(statusHistory, :empty), :entry)",
        ]
        sets += [f"#f{i} = :f{i}" for i in range(len(fields))]
        expression = "SET " + ", ".join(sets) + " ADD historyKeys :key"
        if remove:
            expression += " REMOVE " + ", ".join(remove)
        all_values = {
            ":status": status,
            ":at": at,
            ":empty": [],
            ":entry": [history_entry],
            ":key": {entry_key},
            ":entry_key": entry_key,
            **{f":f{i}": value for i, value in enumerate(fields.values())},
            **values,
        }
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=attempt.key,
                UpdateExpression=expression,
                ConditionExpression=f"NOT contains(historyKeys, :entry_key) AND ({condition})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item(all_values),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            raise _Refused(from_item(exc.response.get("Item", {}))) from None  # type: ignore[arg-type]


class _Refused(Exception):
    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__("condition failed")
        self.item = item
