"""The kinds of AWS resource a worker can declare, and the runtime's own two tables.

A resource is declared once, as a constant in the package that owns it (`workers/ingest/resources.py`
declares the landing bucket; compact imports it). Its `key` names its settings override
(`FLEET_QUEUES__INGEST=files-in`) and its `default` is the contract name, before `FLEET_PREFIX`.
`fleet bootstrap`, the CLI, docker-compose and infra/ all read these declarations through the registry
(`shared/registry.py`); nothing else lists resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

# SQS redrive safety net: a message received this many times goes to the DLQ even if no worker
# could record why (a crash loop). The runtime dead-letters earlier, with the reason attached.
REDRIVE_MAX_RECEIVE_COUNT = 5
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
QUEUE_RETENTION_SECONDS = 7 * 24 * 3600


class Names(Protocol):
    """What resolving a name needs from the settings: the prefix and the renames of each kind."""

    prefix: str

    def renames(self, kind: str) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Resource:
    key: str
    default: str
    kind: ClassVar[str] = "resource"
    overrides: ClassVar[str] = ""  # the FleetSettings field holding renames of this kind

    @property
    def ident(self) -> tuple[str, str]:
        return (self.kind, self.key)

    def name_in(self, names: Names) -> str:
        """The real name: `FLEET_PREFIX` + the rename in settings, else the contract default."""
        return names.prefix + names.renames(self.overrides).get(self.key, self.default)


@dataclass(frozen=True)
class Queue(Resource):
    """A standard SQS queue with its DLQ (`<name>-dlq`) and a redrive policy as the last-resort net."""

    max_receive_count: int = REDRIVE_MAX_RECEIVE_COUNT
    kind: ClassVar[str] = "queue"
    overrides: ClassVar[str] = "queues"


@dataclass(frozen=True)
class DeadLetters(Resource):
    """A queue's DLQ: always named after its queue (`<queue name>-dlq`), renamed with it."""

    kind: ClassVar[str] = "dlq"

    @classmethod
    def of(cls, queue: Queue) -> DeadLetters:
        return cls(queue.key, queue.default)

    def name_in(self, names: Names) -> str:
        return Queue(self.key, self.default).name_in(names) + "-dlq"


@dataclass(frozen=True)
class Index:
    name: str
    hash_key: str
    range_key: str | None = None


@dataclass(frozen=True)
class Table(Resource):
    """A DynamoDB table (on-demand); every key attribute is a string."""

    hash_key: str = "pk"
    range_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = ()
    kind: ClassVar[str] = "table"
    overrides: ClassVar[str] = "tables"

    def attributes(self) -> list[str]:
        names = [self.hash_key, *([self.range_key] if self.range_key else [])]
        for index in self.indexes:
            names += [index.hash_key, *([index.range_key] if index.range_key else [])]
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Notify:
    """S3 event notifications from a bucket prefix to a queue."""

    queue: Queue
    prefix: str = ""
    events: tuple[str, ...] = ("s3:ObjectCreated:*",)


@dataclass(frozen=True)
class Bucket(Resource):
    notify: tuple[Notify, ...] = ()
    kind: ClassVar[str] = "bucket"
    overrides: ClassVar[str] = "buckets"


@dataclass(frozen=True)
class Stream(Resource):
    shards: int = 2
    kind: ClassVar[str] = "stream"
    overrides: ClassVar[str] = "streams"


@dataclass(frozen=True)
class Topic(Resource):
    kind: ClassVar[str] = "topic"
    overrides: ClassVar[str] = "topics"


@dataclass(frozen=True)
class Bus(Resource):
    kind: ClassVar[str] = "bus"
    overrides: ClassVar[str] = "buses"


@dataclass(frozen=True)
class Rule(Resource):
    """An EventBridge rule delivering matching events to a queue; `bus=None` is the default bus."""

    pattern: Mapping[str, Any] = field(default_factory=dict)
    target: Queue | None = None
    bus: Bus | None = None
    kind: ClassVar[str] = "rule"
    overrides: ClassVar[str] = "rules"


@dataclass(frozen=True)
class Secret(Resource):
    """A Secrets Manager secret; bootstrap creates it with `placeholder` (field names, empty values)."""

    placeholder: Mapping[str, str] = field(default_factory=dict)
    kind: ClassVar[str] = "secret"
    overrides: ClassVar[str] = "secrets"


@dataclass(frozen=True)
class Metrics(Resource):
    """CloudWatch metrics (`PutMetricData` takes no resource ARN: IAM grants it on `*`)."""

    kind: ClassVar[str] = "metrics"
    overrides: ClassVar[str] = ""


KINDS: tuple[type[Resource], ...] = (Queue, Table, Bucket, Stream, Topic, Bus, Rule, Secret)

# The runtime's own resources, used by every worker.
JOBS = Table("jobs", "fleet-jobs", hash_key="execution_id")
LEASES = Table("leases", "fleet-leases", hash_key="pk", ttl_attribute="ttl")
CLOUDWATCH = Metrics("cloudwatch", "*")
