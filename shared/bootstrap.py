"""Create the declared resources idempotently: each is looked up first and created or corrected only
when it differs. Running it twice changes nothing (every line of the second report is `unchanged`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.clients import AwsClients
from shared.errors import error_code
from shared.resources import (
    DLQ_RETENTION_SECONDS,
    BucketSpec,
    BusSpec,
    IndexSpec,
    QueueSpec,
    RuleSpec,
    SecretSpec,
    Spec,
    StreamSpec,
    TableSpec,
    TopicSpec,
)

log = logging.getLogger("fleet.bootstrap")

NOT_FOUND = {
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NoSuchBucket",
    "404",
    "ResourceNotFoundException",
    "NotFound",
}


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # created | updated | unchanged


def _missing(exc: ClientError) -> bool:
    return error_code(exc) in NOT_FOUND


class Bootstrapper:
    def __init__(self, aws: AwsClients) -> None:
        self.aws = aws
        self._queue_arns: dict[str, str] = {}

    async def run(self, specs: Iterable[Spec], progress: Callable[[Change], None] | None = None) -> list[Change]:
        changes = []
        # Queues first: buckets and rules point at them.
        ordered = sorted(specs, key=lambda s: 0 if isinstance(s, QueueSpec) else 1)
        for spec in ordered:
            action = await self._ensure(spec)
            change = Change(spec.kind, spec.name, action)
            changes.append(change)
            if progress:
                progress(change)
        return changes

    async def _ensure(self, spec: Spec) -> str:
        match spec:
            case QueueSpec():
                return await self._queue(spec)
            case BucketSpec():
                return await self._bucket(spec)
            case TableSpec():
                return await self._table(spec)
            case StreamSpec():
                return await self._stream(spec)
            case TopicSpec():
                return await self._topic(spec)
            case BusSpec():
                return await self._bus(spec)
            case RuleSpec():
                return await self._rule(spec)
            case SecretSpec():
                return await self._secret(spec)
        raise TypeError(f"unknown resource spec {spec!r}")

    # --- SQS ---------------------------------------------------------------------------------------

    async def _queue_arn(self, name: str) -> str:
        if name not in self._queue_arns:
            sqs = self.aws.sqs
            url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
            attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            self._queue_arns[name] = attrs["Attributes"]["QueueArn"]
        return self._queue_arns[name]

    async def _ensure_queue(self, name: str, wanted: dict[str, str]) -> str:
        sqs = self.aws.sqs
        try:
            url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        except ClientError as exc:
            if not _missing(exc):
                raise
            await sqs.create_queue(QueueName=name, Attributes=wanted)  # type: ignore[arg-type]
            return "created"
        resp = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        current: dict[str, str] = {str(k): v for k, v in resp["Attributes"].items()}
        differs = {k: v for k, v in wanted.items() if not _same_attribute(k, current.get(k), v)}
        if not differs:
            return "unchanged"
        await sqs.set_queue_attributes(QueueUrl=url, Attributes=differs)  # type: ignore[arg-type]
        return "updated"

    async def _queue(self, spec: QueueSpec) -> str:
        dlq_action = await self._ensure_queue(spec.dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})
        dlq_arn = await self._queue_arn(spec.dlq)
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count})
        action = await self._ensure_queue(
            spec.name,
            {
                "VisibilityTimeout": str(spec.visibility_timeout),
                "RedrivePolicy": redrive,
                "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS // 2),
            },
        )
        return action if dlq_action == "unchanged" or action != "unchanged" else "updated"

    # --- S3 ----------------------------------------------------------------------------------------

    async def _bucket(self, spec: BucketSpec) -> str:
        s3 = self.aws.s3
        action = "unchanged"
        try:
            await s3.head_bucket(Bucket=spec.name)
        except ClientError as exc:
            if not _missing(exc):
                raise
            region = self.aws.settings.region
            if region == "us-east-1":
                await s3.create_bucket(Bucket=spec.name)
            else:
                await s3.create_bucket(
                    Bucket=spec.name,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
            action = "created"
        if spec.notify_queue:
            arn = await self._queue_arn(spec.notify_queue)
            wanted = {
                "QueueConfigurations": [
                    {
                        "Id": "fleet-ingest",
                        "QueueArn": arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": spec.notify_prefix}]}},
                    }
                ]
            }
            current = await s3.get_bucket_notification_configuration(Bucket=spec.name)
            queues = current.get("QueueConfigurations", [])
            if not any(q.get("QueueArn") == arn for q in queues):
                await s3.put_bucket_notification_configuration(
                    Bucket=spec.name,
                    NotificationConfiguration=wanted,  # type: ignore[arg-type]
                )
                action = "updated" if action == "unchanged" else action
        return action

    # --- DynamoDB ----------------------------------------------------------------------------------

    async def _table(self, spec: TableSpec) -> str:
        ddb = self.aws.dynamodb
        action = "unchanged"
        try:
            table = (await ddb.describe_table(TableName=spec.name))["Table"]
            existing = {ix["IndexName"] for ix in table.get("GlobalSecondaryIndexes", [])}
            for index in spec.indexes:
                if index.name not in existing:
                    # A table from an older release: add the index (one per UpdateTable call), keep the data.
                    await ddb.update_table(
                        TableName=spec.name,
                        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in spec.attributes()],
                        GlobalSecondaryIndexUpdates=[{"Create": _index(index)}],
                    )
                    action = "updated"
        except ClientError as exc:
            if not _missing(exc):
                raise
            key_schema: list[Any] = [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
            if spec.range_key:
                key_schema.append({"AttributeName": spec.range_key, "KeyType": "RANGE"})
            kwargs: dict[str, Any] = {}
            if spec.indexes:
                kwargs["GlobalSecondaryIndexes"] = [_index(ix) for ix in spec.indexes]
            await ddb.create_table(
                TableName=spec.name,
                KeySchema=key_schema,
                AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in spec.attributes()],
                BillingMode="PAY_PER_REQUEST",
                **kwargs,
            )
            await ddb.get_waiter("table_exists").wait(TableName=spec.name, WaiterConfig={"Delay": 1})
            action = "created"
        if spec.ttl_attribute:
            ttl = (await ddb.describe_time_to_live(TableName=spec.name))["TimeToLiveDescription"]
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                await ddb.update_time_to_live(
                    TableName=spec.name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
                )
                action = "updated" if action == "unchanged" else action
        return action

    # --- Kinesis, SNS, EventBridge, Secrets Manager --------------------------------------------------

    async def _stream(self, spec: StreamSpec) -> str:
        kinesis = self.aws.kinesis
        try:
            await kinesis.describe_stream_summary(StreamName=spec.name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await kinesis.create_stream(StreamName=spec.name, ShardCount=spec.shards)
        for _ in range(60):
            summary = (await kinesis.describe_stream_summary(StreamName=spec.name))["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.5)
        return "created"

    async def _topic(self, spec: TopicSpec) -> str:
        sns = self.aws.sns
        paginator = sns.get_paginator("list_topics")
        async for page in paginator.paginate():
            if any(t["TopicArn"].rsplit(":", 1)[-1] == spec.name for t in page.get("Topics", [])):
                return "unchanged"
        await sns.create_topic(Name=spec.name)
        return "created"

    async def _bus(self, spec: BusSpec) -> str:
        try:
            await self.aws.events.describe_event_bus(Name=spec.name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await self.aws.events.create_event_bus(Name=spec.name)
        return "created"

    async def _rule(self, spec: RuleSpec) -> str:
        events = self.aws.events
        pattern = json.dumps(spec.pattern, sort_keys=True)
        action = "unchanged"
        try:
            current = await events.describe_rule(Name=spec.name, EventBusName=spec.bus)
            if json.loads(current.get("EventPattern", "{}")) != spec.pattern:
                action = "updated"
        except ClientError as exc:
            if not _missing(exc):
                raise
            action = "created"
        if action != "unchanged":
            await events.put_rule(Name=spec.name, EventBusName=spec.bus, EventPattern=pattern, State="ENABLED")
        arn = await self._queue_arn(spec.target_queue)
        targets = (await events.list_targets_by_rule(Rule=spec.name, EventBusName=spec.bus))["Targets"]
        if not any(t["Arn"] == arn for t in targets):
            await events.put_targets(
                Rule=spec.name, EventBusName=spec.bus, Targets=[{"Id": spec.target_queue, "Arn": arn}]
            )
            action = "updated" if action == "unchanged" else action
        return action

    async def _secret(self, spec: SecretSpec) -> str:
        sm = self.aws.secretsmanager
        try:
            await sm.describe_secret(SecretId=spec.name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await sm.create_secret(Name=spec.name, SecretString=json.dumps(spec.placeholder))
        return "created"


def _index(index: IndexSpec) -> Any:
    return {
        "IndexName": index.name,
        "KeySchema": [
            {"AttributeName": index.hash_key, "KeyType": "HASH"},
            *([{"AttributeName": index.range_key, "KeyType": "RANGE"}] if index.range_key else []),
        ],
        "Projection": {"ProjectionType": "ALL"},
    }


def _same_attribute(key: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if key == "RedrivePolicy":
        a, b = json.loads(current), json.loads(wanted)
        return bool(
            a.get("deadLetterTargetArn") == b["deadLetterTargetArn"]
            and int(a.get("maxReceiveCount", 0)) == int(b["maxReceiveCount"])
        )
    return current == wanted
