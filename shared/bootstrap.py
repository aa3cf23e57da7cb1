"""Create the declared resources idempotently: each is looked up first and created or corrected only
when it differs. Running it twice changes nothing (every line of the second report is `unchanged`).

What exists comes from the registry: the runtime's tables and every resource a worker declares. A queue's
visibility timeout is its consumer's tuned `visibility_timeout`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.clients import AwsClients
from shared.errors import error_code
from shared.registry import Registry
from shared.resources import (
    DLQ_RETENTION_SECONDS,
    QUEUE_RETENTION_SECONDS,
    Bucket,
    Bus,
    DeadLetters,
    Index,
    Queue,
    Resource,
    Rule,
    Secret,
    Stream,
    Table,
    Topic,
)
from shared.settings import FleetSettings

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


def visibility_timeouts(registry: Registry, settings: FleetSettings) -> dict[str, int]:
    """Queue key -> its consumer's visibility timeout (a queue nobody consumes gets the fleet default)."""
    out = {}
    for resource in registry.resources():
        if isinstance(resource, Queue):
            consumer = registry.consumer_of(resource)
            tuning = registry.tuning(settings, consumer.name) if consumer else settings.defaults
            out[resource.key] = tuning.visibility_timeout
    return out


class Bootstrapper:
    def __init__(self, aws: AwsClients, registry: Registry) -> None:
        self.aws = aws
        self.settings = aws.settings
        self.registry = registry
        self._visibility = visibility_timeouts(registry, self.settings)
        self._queue_arns: dict[str, str] = {}

    def name(self, resource: Resource) -> str:
        return self.settings.name_of(resource)

    async def run(
        self, resources: Iterable[Resource] | None = None, progress: Callable[[Change], None] | None = None
    ) -> list[Change]:
        changes = []
        # Queues first: buckets and rules point at them.
        wanted = self.registry.resources() if resources is None else list(resources)
        ordered = sorted(wanted, key=lambda r: 0 if isinstance(r, Queue) else 1)
        for resource in ordered:
            action = await self._ensure(resource)
            change = Change(resource.kind, self.name(resource), action)
            changes.append(change)
            if progress:
                progress(change)
        return changes

    async def _ensure(self, resource: Resource) -> str:
        match resource:
            case Queue():
                return await self._queue(resource)
            case Bucket():
                return await self._bucket(resource)
            case Table():
                return await self._table(resource)
            case Stream():
                return await self._stream(resource)
            case Topic():
                return await self._topic(resource)
            case Bus():
                return await self._bus(resource)
            case Rule():
                return await self._rule(resource)
            case Secret():
                return await self._secret(resource)
        raise TypeError(f"bootstrap cannot create {resource!r}")

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

    async def _queue(self, spec: Queue) -> str:
        dlq = self.name(DeadLetters.of(spec))
        dlq_action = await self._ensure_queue(dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})
        dlq_arn = await self._queue_arn(dlq)
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count})
        action = await self._ensure_queue(
            self.name(spec),
            {
                "VisibilityTimeout": str(self._visibility[spec.key]),
                "RedrivePolicy": redrive,
                "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS),
            },
        )
        return action if dlq_action == "unchanged" or action != "unchanged" else "updated"

    async def _allow_sender(self, queue: Queue, sender: Resource, service: str, source_arn: str) -> bool:
        """Put the sender's statement (one per sender, by Sid) in the queue's policy: `service` may send to the
        queue for `source_arn` only. AWS refuses a bucket notification to a queue that does not allow S3, and
        drops a rule's events without a word when the queue does not allow EventBridge; moto and LocalStack
        (by default) check neither: only real AWS would tell. True when the policy changed."""
        sqs = self.aws.sqs
        name = self.name(queue)
        queue_arn = await self._queue_arn(name)
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        # (a queue without a policy answers with no Attributes at all)
        attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])).get("Attributes", {})
        policy = json.loads(attrs.get("Policy") or "{}") or {"Version": "2012-10-17", "Statement": []}
        condition: dict[str, dict[str, str]] = {"ArnEquals": {"aws:SourceArn": source_arn}}
        if service == "s3.amazonaws.com":  # a bucket ARN names no account: S3's own confused-deputy guard
            condition["StringEquals"] = {"aws:SourceAccount": queue_arn.split(":")[4]}
        sid = "Fleet" + "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", f"{sender.kind}-{sender.key}"))
        wanted = {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": condition,
        }
        statements = policy.get("Statement", [])
        if wanted in statements:
            return False
        policy["Statement"] = [*(st for st in statements if st.get("Sid") != sid), wanted]
        await sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
        return True

    # --- S3 ----------------------------------------------------------------------------------------

    async def _bucket(self, spec: Bucket) -> str:
        s3 = self.aws.s3
        name = self.name(spec)
        action = "unchanged"
        try:
            await s3.head_bucket(Bucket=name)
        except ClientError as exc:
            if not _missing(exc):
                raise
            region = self.aws.settings.region
            if region == "us-east-1":
                await s3.create_bucket(Bucket=name)
            else:
                await s3.create_bucket(
                    Bucket=name,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
            action = "created"
        if spec.notify:
            for notify in spec.notify:
                partition = (await self._queue_arn(self.name(notify.queue))).split(":")[1]
                # before the notification: S3 checks that it may deliver when the configuration is put
                if await self._allow_sender(notify.queue, spec, "s3.amazonaws.com", f"arn:{partition}:s3:::{name}"):
                    action = "updated" if action == "unchanged" else action
            wanted = [
                {
                    "Id": f"fleet-{notify.queue.key}",
                    "QueueArn": await self._queue_arn(self.name(notify.queue)),
                    "Events": list(notify.events),
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": notify.prefix}]}},
                }
                for notify in spec.notify
            ]
            current = await s3.get_bucket_notification_configuration(Bucket=name)
            arns = {q.get("QueueArn") for q in current.get("QueueConfigurations", [])}
            if not all(w["QueueArn"] in arns for w in wanted):
                await s3.put_bucket_notification_configuration(
                    Bucket=name,
                    NotificationConfiguration={"QueueConfigurations": wanted},  # type: ignore[typeddict-item]
                )
                action = "updated" if action == "unchanged" else action
        return action

    # --- DynamoDB ----------------------------------------------------------------------------------

    async def _table(self, spec: Table) -> str:
        ddb = self.aws.dynamodb
        name = self.name(spec)
        action = "unchanged"
        try:
            table = (await ddb.describe_table(TableName=name))["Table"]
            existing = {ix["IndexName"] for ix in table.get("GlobalSecondaryIndexes", [])}
            for index in spec.indexes:
                if index.name not in existing:
                    # A table from an older release: add the index (one per UpdateTable call), keep the data.
                    await ddb.update_table(
                        TableName=name,
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
                TableName=name,
                KeySchema=key_schema,
                AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in spec.attributes()],
                BillingMode="PAY_PER_REQUEST",
                **kwargs,
            )
            await ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
            action = "created"
        if spec.ttl_attribute:
            ttl = (await ddb.describe_time_to_live(TableName=name))["TimeToLiveDescription"]
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                await ddb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
                )
                action = "updated" if action == "unchanged" else action
        return action

    # --- Kinesis, SNS, EventBridge, Secrets Manager --------------------------------------------------

    async def _stream(self, spec: Stream) -> str:
        kinesis = self.aws.kinesis
        name = self.name(spec)
        try:
            await kinesis.describe_stream_summary(StreamName=name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await kinesis.create_stream(StreamName=name, ShardCount=spec.shards)
        for _ in range(60):
            summary = (await kinesis.describe_stream_summary(StreamName=name))["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.5)
        return "created"

    async def _topic(self, spec: Topic) -> str:
        sns = self.aws.sns
        name = self.name(spec)
        paginator = sns.get_paginator("list_topics")
        async for page in paginator.paginate():
            if any(t["TopicArn"].rsplit(":", 1)[-1] == name for t in page.get("Topics", [])):
                return "unchanged"
        # A `.fifo` name (FLEET_TOPICS__NOTIFICATIONS=fleet-notifications.fifo) makes a FIFO topic, which drops a
        # repeated notification by its deduplication id.
        attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "false"} if name.endswith(".fifo") else {}
        await sns.create_topic(Name=name, Attributes=attributes)
        return "created"

    async def _bus(self, spec: Bus) -> str:
        name = self.name(spec)
        try:
            await self.aws.events.describe_event_bus(Name=name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await self.aws.events.create_event_bus(Name=name)
        return "created"

    async def _rule(self, spec: Rule) -> str:
        events = self.aws.events
        name = self.name(spec)
        bus = self.name(spec.bus) if spec.bus else "default"
        if spec.target is None:
            raise ValueError(f"rule {spec.key!r} has no target queue")
        pattern = json.dumps(spec.pattern, sort_keys=True)
        action = "unchanged"
        rule_arn = ""
        try:
            current = await events.describe_rule(Name=name, EventBusName=bus)
            rule_arn = current.get("Arn", "")
            if json.loads(current.get("EventPattern", "{}")) != spec.pattern:
                action = "updated"
        except ClientError as exc:
            if not _missing(exc):
                raise
            action = "created"
        if action != "unchanged":
            put = await events.put_rule(Name=name, EventBusName=bus, EventPattern=pattern, State="ENABLED")
            rule_arn = put["RuleArn"]
        if await self._allow_sender(spec.target, spec, "events.amazonaws.com", rule_arn):
            action = "updated" if action == "unchanged" else action
        target = self.name(spec.target)
        arn = await self._queue_arn(target)
        targets = (await events.list_targets_by_rule(Rule=name, EventBusName=bus))["Targets"]
        if not any(t["Arn"] == arn for t in targets):
            await events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": target, "Arn": arn}])
            action = "updated" if action == "unchanged" else action
        return action

    async def _secret(self, spec: Secret) -> str:
        sm = self.aws.secretsmanager
        name = self.name(spec)
        try:
            await sm.describe_secret(SecretId=name)
            return "unchanged"
        except ClientError as exc:
            if not _missing(exc):
                raise
        await sm.create_secret(Name=name, SecretString=json.dumps(dict(spec.placeholder)))
        return "created"


def plan(registry: Registry, settings: FleetSettings) -> list[dict[str, Any]]:
    """What bootstrap creates, as JSON (`fleet bootstrap --print`), every name resolved."""
    visibility = visibility_timeouts(registry, settings)
    out: list[dict[str, Any]] = []
    for resource in registry.resources():
        entry: dict[str, Any] = {"kind": resource.kind, "key": resource.key, "name": settings.name_of(resource)}
        match resource:
            case Queue():
                entry |= {
                    "dlq": settings.name_of(DeadLetters.of(resource)),
                    "visibility_timeout": visibility[resource.key],
                    "max_receive_count": resource.max_receive_count,
                }
                consumer = registry.consumer_of(resource)
                entry["consumer"] = consumer.name if consumer else None
            case Table():
                entry |= {
                    "hash_key": resource.hash_key,
                    "range_key": resource.range_key,
                    "ttl_attribute": resource.ttl_attribute,
                    "indexes": [vars(ix) for ix in resource.indexes],
                }
            case Bucket():
                entry["notify"] = [
                    {"queue": settings.name_of(n.queue), "prefix": n.prefix, "events": list(n.events)}
                    for n in resource.notify
                ]
            case Stream():
                entry["shards"] = resource.shards
            case Rule():
                entry |= {
                    "bus": settings.name_of(resource.bus) if resource.bus else "default",
                    "pattern": dict(resource.pattern),
                    "target": settings.name_of(resource.target) if resource.target else None,
                }
            case Secret():
                entry["fields"] = sorted(resource.placeholder)  # the shape only: values never leave the store
        out.append(entry)
    return out


def _index(index: Index) -> Any:
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
