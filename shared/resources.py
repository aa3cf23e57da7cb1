"""Every AWS resource of the fleet, declared once. `fleet bootstrap` creates them; infra/ reads the same
list (`fleet bootstrap --print` emits it as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.settings import REDRIVE_MAX_RECEIVE_COUNT, FleetSettings

DLQ_RETENTION_SECONDS = 14 * 24 * 3600
CLIP_EVENT_PATTERN = {"detail-type": ["Begin Clip Generation"]}

# queue key -> the worker that consumes it (its tuning sets the queue's visibility timeout)
QUEUE_WORKERS = {
    "ingest": "ingest",
    "compact": "compact",
    "events": "aggregate",
    "sync": "sync",
    "download": "download",
    "clips": "clips",
    "finalize": "finalizer",
    "echo": "echo",
}


@dataclass(frozen=True)
class QueueSpec:
    key: str
    name: str
    dlq: str
    visibility_timeout: int
    max_receive_count: int = REDRIVE_MAX_RECEIVE_COUNT
    kind: str = "queue"


@dataclass(frozen=True)
class BucketSpec:
    name: str
    notify_queue: str | None = None
    notify_prefix: str = ""
    kind: str = "bucket"


@dataclass(frozen=True)
class IndexSpec:
    name: str
    hash_key: str
    range_key: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    hash_key: str
    range_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[IndexSpec, ...] = ()
    kind: str = "table"

    def attributes(self) -> list[str]:
        names = [self.hash_key, *([self.range_key] if self.range_key else [])]
        for index in self.indexes:
            names += [index.hash_key, *([index.range_key] if index.range_key else [])]
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class StreamSpec:
    name: str
    shards: int
    kind: str = "stream"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    kind: str = "topic"


@dataclass(frozen=True)
class BusSpec:
    name: str
    kind: str = "bus"


@dataclass(frozen=True)
class RuleSpec:
    name: str
    bus: str
    pattern: dict[str, Any]
    target_queue: str
    kind: str = "rule"


@dataclass(frozen=True)
class SecretSpec:
    name: str
    placeholder: dict[str, str] = field(default_factory=dict)
    kind: str = "secret"


Spec = QueueSpec | BucketSpec | TableSpec | StreamSpec | TopicSpec | BusSpec | RuleSpec | SecretSpec


def declare(settings: FleetSettings) -> list[Spec]:
    s = settings
    specs: list[Spec] = []
    for key, worker in QUEUE_WORKERS.items():
        name = s.queue(key)
        specs.append(QueueSpec(key, name, f"{name}-dlq", s.tuning(worker).visibility_timeout))
    specs += [
        BucketSpec(s.bucket("landing"), notify_queue=s.queue("ingest"), notify_prefix="incoming/"),
        BucketSpec(s.bucket("lake")),
        BucketSpec(s.bucket("media")),
        # Files, manifests and per-date slots; the sparse "todo" index lists only work still owed
        # (pending files by date and age, open manifests by lease expiry) — workers/ingest/store.py.
        TableSpec(
            s.table("files"),
            "date_prefix",
            "file_key",
            indexes=(IndexSpec("todo", "todo", "todo_order"),),
        ),
        TableSpec(s.table("metrics"), "entity_id", "entity_type"),
        TableSpec(s.table("sync"), "media_id"),
        TableSpec(s.table("clips"), "pk", "sk"),
        TableSpec(s.table("jobs"), "execution_id"),
        TableSpec(s.table("leases"), "pk", ttl_attribute="ttl"),
        StreamSpec(s.name(s.stream_events), s.stream_shards),
        TopicSpec(s.name(s.topic_notifications)),
        BusSpec(s.name(s.bus_alerts)),
        RuleSpec(s.name("fleet-clips-begin"), "default", CLIP_EVENT_PATTERN, s.queue("clips")),
        SecretSpec(
            s.name(s.secret_media_provider),
            placeholder={
                "client_id": "",
                "client_secret": "",
                "access_token": "",
                "refresh_token": "",
                "expires_at": "1970-01-01T00:00:00Z",
            },
        ),
    ]
    return specs


def as_json(specs: list[Spec]) -> list[dict[str, Any]]:
    out = []
    for spec in specs:
        data = asdict(spec)
        if isinstance(spec, SecretSpec):
            data.pop("placeholder")  # the shape is documented; values never leave the secret store
        out.append(data)
    return out
