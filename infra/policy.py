"""Each worker's IAM policy, generated from its declaration (`WorkerSpec.permissions()`).

One function turns a declaration into statements; who calls it decides what an ARN is:

- the CDK stack (infra/stack.py) passes the constructs' own ARNs, so a task role can touch only the
  queues, tables and buckets its worker names;
- the least-privilege tests (tests/iam/) pass ARNs read from the emulator, run the worker under exactly
  that policy, and remove one action at a time to see it fail.

Pure Python, no CDK import: the tests that use it stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.declaration import Uses, WorkerSpec
from shared.resources import Bucket, Metrics, Resource, Rule, Table

# Actions that take no resource ARN: IAM only accepts "Resource": "*" for them.
UNSCOPED = frozenset(
    {
        "cloudwatch:PutMetricData",
        "cloudwatch:GetMetricData",
        "cloudwatch:ListMetrics",
        "dynamodb:ListTables",
        "kinesis:ListStreams",
        "s3:ListAllMyBuckets",
        "secretsmanager:ListSecrets",
        "secretsmanager:GetRandomPassword",
        "sns:ListTopics",
        "sqs:ListQueues",
    }
)

# S3 actions on the bucket itself (arn:aws:s3:::name); every other S3 action is on its objects (name/*).
S3_BUCKET_ACTIONS = frozenset(
    {
        "s3:GetLifecycleConfiguration",
        "s3:PutLifecycleConfiguration",
        "s3:GetEncryptionConfiguration",
        "s3:PutEncryptionConfiguration",
    }
)

# DynamoDB reads that may name an index (its ARN is `table/NAME/index/INDEX`).
DYNAMODB_INDEX_ACTIONS = frozenset({"dynamodb:Query", "dynamodb:Scan"})


def is_bucket_action(action: str) -> bool:
    return action in S3_BUCKET_ACTIONS or "Bucket" in action.partition(":")[2]


@dataclass(frozen=True)
class Grant:
    """Some actions on some ARNs of one declared resource (`resource=None`: on "*")."""

    actions: tuple[str, ...]
    resource: Resource | None
    scope: str = "self"  # self | objects | indexes
    condition: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sid(self) -> str:
        if self.resource is None:
            base = "Any" + "".join(sorted({a.split(":")[0].title() for a in self.actions}))
        else:
            base = self.resource.kind.title() + _camel(self.resource.key)
        return base + {"self": "", "objects": "Objects", "indexes": "Indexes"}[self.scope]


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)


def grants(spec: WorkerSpec, *, metrics_namespace: str = "Fleet") -> list[Grant]:
    """The worker's permissions (the runtime's calls included) as statements, least privilege first:
    each action only on the ARN it acts on."""
    out: list[Grant] = []
    unscoped: dict[str, None] = {}
    for use in spec.permissions():
        out.extend(_grants_for(use, unscoped, metrics_namespace))
    if unscoped:
        out.append(Grant(tuple(unscoped), None))
    return [g for g in out if g.actions]


def _grants_for(use: Uses, unscoped: dict[str, None], namespace: str) -> Iterable[Grant]:
    resource = use.resource
    if isinstance(resource, Metrics):
        # PutMetricData takes no ARN; the namespace condition keeps a worker to the fleet's metrics.
        yield Grant(use.actions, None, condition={"StringEquals": {"cloudwatch:namespace": namespace}})
        return
    scoped = []
    for action in use.actions:
        if action in UNSCOPED:
            unscoped[action] = None
        else:
            scoped.append(action)
    if isinstance(resource, Bucket):
        yield Grant(tuple(a for a in scoped if is_bucket_action(a)), resource)
        yield Grant(tuple(a for a in scoped if not is_bucket_action(a)), resource, "objects")
    elif isinstance(resource, Table) and resource.indexes:
        yield Grant(tuple(a for a in scoped if a not in DYNAMODB_INDEX_ACTIONS), resource)
        yield Grant(tuple(a for a in scoped if a in DYNAMODB_INDEX_ACTIONS), resource, "indexes")
    else:
        yield Grant(tuple(scoped), resource)


ArnOf = Callable[[Resource, str], list[str]]
"""(resource, scope) -> the ARNs a grant covers; scope is "self", "objects" or "indexes"."""


def statements(spec: WorkerSpec, arn_of: ArnOf, *, metrics_namespace: str = "Fleet") -> list[dict[str, Any]]:
    """IAM policy statements (JSON shape) for the worker."""
    out = []
    for grant in grants(spec, metrics_namespace=metrics_namespace):
        statement: dict[str, Any] = {
            "Sid": grant.sid,
            "Effect": "Allow",
            "Action": sorted(grant.actions),
            "Resource": ["*"] if grant.resource is None else arn_of(grant.resource, grant.scope),
        }
        if grant.condition:
            statement["Condition"] = dict(grant.condition)
        out.append(statement)
    return out


def document(spec: WorkerSpec, arn_of: ArnOf, *, metrics_namespace: str = "Fleet") -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements(spec, arn_of, metrics_namespace=metrics_namespace)}


@dataclass(frozen=True)
class ArnFormat:
    """ARNs from names, for a known partition, region and account (an emulator's, read from STS).

    The CDK stack does not use this: it takes each construct's own ARN attribute."""

    region: str
    account: str
    names: Callable[[Resource], str]
    partition: str = "aws"

    def __call__(self, resource: Resource, scope: str) -> list[str]:
        name = self.names(resource)
        p, r, a = self.partition, self.region, self.account
        match resource.kind:
            case "queue" | "dlq":
                return [f"arn:{p}:sqs:{r}:{a}:{name}"]
            case "table":
                table = f"arn:{p}:dynamodb:{r}:{a}:table/{name}"
                return [table, f"{table}/index/*"] if scope == "indexes" else [table]
            case "bucket":
                return [f"arn:{p}:s3:::{name}/*"] if scope == "objects" else [f"arn:{p}:s3:::{name}"]
            case "stream":
                return [f"arn:{p}:kinesis:{r}:{a}:stream/{name}"]
            case "topic":
                return [f"arn:{p}:sns:{r}:{a}:{name}"]
            case "bus":
                return [f"arn:{p}:events:{r}:{a}:event-bus/{name}"]
            case "rule":
                assert isinstance(resource, Rule)
                path = f"{self.names(resource.bus)}/{name}" if resource.bus else name
                return [f"arn:{p}:events:{r}:{a}:rule/{path}"]
            case "secret":
                return [f"arn:{p}:secretsmanager:{r}:{a}:secret:{name}-??????"]
        raise ValueError(f"no ARN format for {resource.kind} {resource.key!r}")
