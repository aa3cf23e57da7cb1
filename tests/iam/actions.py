"""API operations -> the IAM actions AWS checks for them, and IAM policies -> what moto checks.

Two tables, both from the services' documentation and moto 5.2's source:

- `permissions_of(call)`: what a recorded botocore call needs in IAM terms, on which resource name
  (DeleteMessageBatch is authorised as sqs:DeleteMessage, HeadObject as s3:GetObject, each item of a
  TransactWriteItems as its own PutItem/UpdateItem/...);
- `for_moto(document)`: the same policy as moto's enforcement reads it. moto checks the operation's own
  name where AWS checks another (sqs:DeleteMessageBatch, s3:HeadBucket, dynamodb:TransactWriteItems),
  signs CloudWatch as `monitoring:`, matches ARNs only for S3 and for SQS calls that carry a QueueUrl
  (elsewhere a statement counts only with "Resource": "*"), and cannot evaluate conditions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ANY = "*"

# Operation -> the IAM action AWS authorises it as, where the two names differ.
RENAMED = {
    ("sqs", "DeleteMessageBatch"): "DeleteMessage",
    ("sqs", "SendMessageBatch"): "SendMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "ChangeMessageVisibility",
    ("s3", "HeadObject"): "GetObject",
    ("s3", "HeadBucket"): "ListBucket",
    ("s3", "ListObjects"): "ListBucket",
    ("s3", "ListObjectsV2"): "ListBucket",
    ("s3", "CreateMultipartUpload"): "PutObject",
    ("s3", "UploadPart"): "PutObject",
    ("s3", "CompleteMultipartUpload"): "PutObject",
    ("s3", "ListParts"): "ListMultipartUploadParts",
    ("s3", "ListMultipartUploads"): "ListBucketMultipartUploads",
    ("s3", "DeleteObjects"): "DeleteObject",
    ("s3", "GetBucketNotificationConfiguration"): "GetBucketNotification",
    ("s3", "PutBucketNotificationConfiguration"): "PutBucketNotification",
    ("dynamodb", "TransactGetItems"): "GetItem",
}

# IAM prefix of each botocore service name, where they differ.
PREFIX = {"monitoring": "cloudwatch"}

# A TransactWriteItems item -> the action AWS authorises it as.
TRANSACT_ITEM = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


@dataclass(frozen=True, order=True)
class Permission:
    """One IAM action on one resource, by name (`*`: no resource)."""

    action: str
    resource: str

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


def _last(value: str) -> str:
    return value.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _resource(service: str, params: Mapping[str, Any]) -> str:
    match service:
        case "sqs":
            if "QueueUrl" in params:
                return _last(str(params["QueueUrl"]))
            return str(params.get("QueueName", ANY))
        case "s3":
            return str(params.get("Bucket", ANY))
        case "dynamodb":
            return str(params.get("TableName", ANY))
        case "kinesis":
            if "StreamName" in params:
                return str(params["StreamName"])
            return _last(str(params["StreamARN"])) if "StreamARN" in params else ANY
        case "sns":
            return _last(str(params["TopicArn"])) if "TopicArn" in params else ANY
        case "events":
            return str(params.get("EventBusName") or params.get("Name") or ANY)
        case "secretsmanager":
            secret = str(params.get("SecretId", ANY))
            # An ARN ends in the name plus "-" and six random characters.
            return secret.split(":secret:", 1)[1][:-7] if ":secret:" in secret else secret
    return ANY


def permissions_of(service: str, operation: str, params: Mapping[str, Any]) -> Iterator[Permission]:
    """The IAM permissions one API call needs."""
    prefix = PREFIX.get(service, service)
    if (service, operation) == ("dynamodb", "TransactWriteItems"):
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                yield Permission(f"dynamodb:{TRANSACT_ITEM[kind]}", str(body["TableName"]))
        return
    if (service, operation) == ("dynamodb", "TransactGetItems"):
        for item in params.get("TransactItems", []):
            yield Permission("dynamodb:GetItem", str(item["Get"]["TableName"]))
        return
    if service == "dynamodb" and operation in ("BatchGetItem", "BatchWriteItem"):
        for table in params.get("RequestItems", {}):
            yield Permission(f"dynamodb:{operation}", str(table))
        return
    if (service, operation) == ("events", "PutEvents"):
        for bus in {str(e.get("EventBusName") or "default") for e in params.get("Entries", [])}:
            yield Permission("events:PutEvents", _last(bus))
        return
    action = f"{prefix}:{RENAMED.get((service, operation), operation)}"
    yield Permission(action, _resource(service, params))
    if (service, operation) in (("s3", "CopyObject"), ("s3", "UploadPartCopy")):
        source = params.get("CopySource")
        bucket = source.get("Bucket") if isinstance(source, dict) else str(source).lstrip("/").split("/", 1)[0]
        yield Permission("s3:GetObject", str(bucket))


# --- what moto checks --------------------------------------------------------------------------------

# An AWS action -> the extra names moto checks for the operations AWS authorises with it.
MOTO_ALIASES = {
    "sqs:DeleteMessage": ("sqs:DeleteMessageBatch",),
    "sqs:SendMessage": ("sqs:SendMessageBatch",),
    "sqs:ChangeMessageVisibility": ("sqs:ChangeMessageVisibilityBatch",),
    "s3:ListBucket": ("s3:HeadBucket",),
    "dynamodb:PutItem": ("dynamodb:TransactWriteItems",),
    "dynamodb:UpdateItem": ("dynamodb:TransactWriteItems",),
    "dynamodb:DeleteItem": ("dynamodb:TransactWriteItems",),
    "dynamodb:ConditionCheckItem": ("dynamodb:TransactWriteItems",),
    "dynamodb:GetItem": ("dynamodb:TransactGetItems",),
}

# SQS operations that carry no QueueUrl: moto checks them against "*".
SQS_UNSCOPED = {"sqs:GetQueueUrl", "sqs:ListQueues", "sqs:CreateQueue"}


def moto_checks_arn(action: str) -> bool:
    """Whether moto matches this action's statement Resource against the real ARN."""
    service = action.split(":", 1)[0]
    return service == "s3" or (service == "sqs" and action not in SQS_UNSCOPED)


def moto_names(action: str) -> list[str]:
    service, _, name = action.partition(":")
    if service == "cloudwatch":
        return [f"monitoring:{name}"]  # moto takes the service from the SigV4 scope
    return [action, *MOTO_ALIASES.get(action, ())]


def for_moto(document: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as moto enforces it (see the module docstring)."""
    statements = []
    for original in document["Statement"]:
        statement = copy.deepcopy(dict(original))
        statement.pop("Condition", None)
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        scoped = [a for a in actions if moto_checks_arn(a)]
        unscoped = [a for a in actions if not moto_checks_arn(a)]
        if scoped:
            statements.append({**statement, "Action": sorted({n for a in scoped for n in moto_names(a)})})
        if unscoped:
            sid = statement.get("Sid", "") + "Moto"
            names = sorted({n for a in unscoped for n in moto_names(a)})
            statements.append({"Sid": sid, "Effect": "Allow", "Action": names, "Resource": "*"})
    return {"Version": document.get("Version", "2012-10-17"), "Statement": statements}


@dataclass(frozen=True, order=True)
class Removal:
    """One permission moto can tell apart: an S3 or SQS action in one statement (by Sid), any other
    action by name (moto grants those on "*", so every statement holding it must lose it)."""

    action: str
    sid: str | None

    def __str__(self) -> str:
        return f"{self.action} ({self.sid})" if self.sid else self.action

    def apply(self, document: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(dict(document))
        kept = []
        for statement in out["Statement"]:
            if self.sid is None or statement.get("Sid") == self.sid:
                statement["Action"] = [a for a in statement["Action"] if a != self.action]
            if statement["Action"]:
                kept.append(statement)
        out["Statement"] = kept
        return out


def removals(document: Mapping[str, Any]) -> list[Removal]:
    found = {
        Removal(action, statement["Sid"] if moto_checks_arn(action) else None)
        for statement in document["Statement"]
        for action in statement["Action"]
    }
    return sorted(found)
