"""`fleet-jobs`: one item per job, keyed by `execution_id`.

- `progress.<stage>`: the latest transition of each stage (written by the runtime and stages here);
- `history`: every transition, append-only;
- `stages.<stage>`: a stage's own result data (the finalizer's `stages.finalizer`), never touched here.

Updates SET one path and append to the history, so no writer clobbers another's data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.errors import is_conditional_failure

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_ser = TypeSerializer()
_de = TypeDeserializer()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def new_job_id() -> str:
    return str(uuid.uuid4())


class JobStore:
    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    async def create(self, job_id: str, kind: str, detail: dict[str, Any] | None = None) -> None:
        now = now_iso()
        item = {
            "execution_id": job_id,
            "kind": kind,
            "status": "SUBMITTED",
            "created_at": now,
            "updated_at": now,
            "stages": {},
            "progress": {},
            "history": [{"stage": "submit", "status": "SUBMITTED", "at": now}],
            "detail": detail or {},
        }
        try:
            await self._ddb.put_item(
                TableName=self.table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(execution_id)",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise

    async def record_stage(self, job_id: str, stage: str, status: str, **data: Any) -> None:
        """SET progress.<stage> and append to the history; creates the item if no submit did."""
        now = now_iso()
        entry = {
            "stage": stage,
            "status": status,
            "at": now,
            **{k: v for k, v in data.items() if v is not None},
        }
        values = to_item({":d": {**entry}, ":h": [entry], ":e": [], ":now": now, ":empty": {}})
        names = {"#s": stage}
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": job_id}),
                UpdateExpression=(
                    "SET progress.#s = :d, updated_at = :now, history = list_append(if_not_exists(history, :e), :h)"
                ),
                ConditionExpression="attribute_exists(progress)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: values[k] for k in (":d", ":h", ":e", ":now")},
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            # No item yet (a message sent without `fleet submit`): create the maps, then retry once.
            await self._ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": job_id}),
                UpdateExpression=(
                    "SET progress = if_not_exists(progress, :empty), stages = if_not_exists(stages, :empty), "
                    "created_at = if_not_exists(created_at, :now), #st = if_not_exists(#st, :sub)"
                ),
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={
                    **{k: values[k] for k in (":empty", ":now")},
                    **to_item({":sub": "SUBMITTED"}),
                },
            )
            await self.record_stage(job_id, stage, status, **data)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        resp = await self._ddb.get_item(
            TableName=self.table, Key=to_item({"execution_id": job_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return from_item(item) if item else None
