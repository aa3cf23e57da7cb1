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
    """Jobs, and who may touch them.

    A job record names the queues whose messages may record on it (`queues`): `fleet submit` (`send_job`)
    grants the queue it sends to, a stage handing a job on grants the next queue (`entitle`). A message's
    `fleet.job-id` is only a claim: `record_stage(..., queue=...)` writes only if the job exists and grants
    that queue. Nothing here creates a job from a message.
    """

    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    async def create(
        self,
        job_id: str,
        kind: str,
        detail: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        terminal: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Record a new job; `queue` may touch it; `terminal` names the worker whose outcome is its status;
        `fields` are a kind's own top-level attributes (`children` and `units` for a job made of jobs)."""
        now = now_iso()
        item: dict[str, Any] = {
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
        if queue:
            item["queues"] = {queue}
        if terminal:
            item["terminal"] = terminal
        item.update(fields or {})
        try:
            await self._ddb.put_item(
                TableName=self.table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(execution_id)",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise

    async def entitle(self, job_id: str, queue: str) -> bool:
        """Let messages of `queue` record on an existing job (a stage handing it on). False if no such job."""
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": job_id}),
                UpdateExpression="ADD queues :q",
                ConditionExpression="attribute_exists(execution_id)",
                ExpressionAttributeValues=to_item({":q": {queue}}),
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            return False
        return True

    async def link(self, job_id: str, kind: str, match: dict[str, str], path: str, value: Any) -> bool:
        """SET `path` on a job of `kind` whose `detail` holds `match` (a stage recording what became of a job
        it did not run, such as the manifests an upload's files went to). False if no such job matches."""
        names = {"#k": "kind", "#d": "detail", **{f"#p{i}": part for i, part in enumerate(path.split("."))}}
        values: dict[str, Any] = {":kind": kind, ":v": value}
        conditions = ["#k = :kind"]
        for i, (key, expected) in enumerate(match.items()):
            names[f"#m{i}"] = key
            values[f":m{i}"] = expected
            conditions.append(f"#d.#m{i} = :m{i}")
        target = ".".join(f"#p{i}" for i in range(len(path.split("."))))
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": job_id}),
                UpdateExpression=f"SET {target} = :v",
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item(values),
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            return False
        return True

    async def record_stage(
        self,
        job_id: str,
        stage: str,
        status: str,
        *,
        queue: str | None = None,
        final: str | None = None,
        **data: Any,
    ) -> dict[str, Any] | None:
        """SET progress.<stage> and append to the history (and SET the job's `status` to `final`).

        Only on an existing job, and with `queue`, only if the job grants that queue: returns the job as it
        is after the update, or None when it may not be touched."""
        now = now_iso()
        entry = {"stage": stage, "status": status, "at": now, **{k: v for k, v in data.items() if v is not None}}
        values: dict[str, Any] = {":d": entry, ":h": [entry], ":e": [], ":now": now}
        update = "SET progress.#s = :d, updated_at = :now, history = list_append(if_not_exists(history, :e), :h)"
        names = {"#s": stage}
        condition = "attribute_exists(progress)"
        if queue is not None:
            condition += " AND contains(queues, :q)"
            values[":q"] = queue
        if final is not None:
            update += ", #st = :final"
            names["#st"] = "status"
            values[":final"] = final
        try:
            resp = await self._ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": job_id}),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            return None
        return from_item(dict(resp.get("Attributes", {})))

    async def get(self, job_id: str) -> dict[str, Any] | None:
        resp = await self._ddb.get_item(
            TableName=self.table, Key=to_item({"execution_id": job_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return from_item(item) if item else None

    async def find(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids of jobs starting with `prefix` (for `fleet status 8c1f2a07`); a scan: an operator's tool."""
        found: list[str] = []
        kwargs: dict[str, Any] = {}
        while len(found) < limit:
            resp = await self._ddb.scan(
                TableName=self.table,
                ProjectionExpression="execution_id",
                FilterExpression="begins_with(execution_id, :p)",
                ExpressionAttributeValues=to_item({":p": prefix}),
                **kwargs,
            )
            found += [from_item(i)["execution_id"] for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return found[:limit]
