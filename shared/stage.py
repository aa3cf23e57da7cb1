"""What a stage is: a message model and one async `handle()`; and what it is handed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from shared import attributes as attrs
from shared.envelope import unwrap
from shared.errors import Poison

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

    from shared.clients import AwsClients
    from shared.jobs import JobStore
    from shared.metrics import Metrics
    from shared.settings import FleetSettings, WorkerTuning

M = TypeVar("M", bound=BaseModel)

JOB_ID_ATTRIBUTE = attrs.JOB_ID
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # UUIDs, or a producer's own ids; never a path


@dataclass(frozen=True)
class Message:
    """One received SQS message, as the runtime sees it."""

    id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float | None
    attributes: dict[str, Any] = field(default_factory=dict)
    received_at: float = field(default_factory=time.time)  # wall clock: SQS's 12 h visibility limit counts from it
    failures: int = 0  # handler failures before this copy was sent (a copy re-sent when it was released)
    origin_id: str = ""  # the id of the first copy

    @classmethod
    def from_sqs(cls, raw: MessageTypeDef, *, received_at: float | None = None) -> Message:
        system = raw.get("Attributes", {})
        sent = system.get("SentTimestamp")
        attributes = dict(raw.get("MessageAttributes", {}))
        message_id = raw["MessageId"]
        return cls(
            id=message_id,
            receipt_handle=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            receive_count=int(system.get("ApproximateReceiveCount", "1")),
            sent_at=int(sent) / 1000 if sent else None,
            attributes=attributes,
            received_at=time.time() if received_at is None else received_at,
            failures=_count(_string_attribute(attributes, attrs.FAILURES)),
            origin_id=_message_id(_string_attribute(attributes, attrs.ORIGIN_ID)) or message_id,
        )

    def attribute(self, name: str) -> str | None:
        return _string_attribute(self.attributes, name)

    @property
    def attempt(self) -> int:
        """This delivery's attempt number: handler failures so far, plus one. Releases never count; a crash
        does (SQS counts the receive), which is what lets its redrive policy catch a message that kills workers."""
        return self.failures + max(1, self.receive_count)

    # cached: the runtime, its logging context and the middleware all ask, once per message each
    @cached_property
    def job_id(self) -> str | None:
        """The `fleet.job-id` the producer claims, if it is a well-formed id. Claimed, not granted: the runtime
        records on that job only if the job lets this queue touch it (`Context.job_id`)."""
        value = self.attribute(JOB_ID_ATTRIBUTE)
        return value if value is not None and JOB_ID.fullmatch(value) else None

    @cached_property
    def job_id_malformed(self) -> bool:
        value = self.attribute(JOB_ID_ATTRIBUTE)
        return value is not None and not JOB_ID.fullmatch(value)

    @property
    def lag_seconds(self) -> float | None:
        return max(0.0, time.time() - self.sent_at) if self.sent_at else None


def _string_attribute(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    return str(value.get("StringValue")) if isinstance(value, dict) and "StringValue" in value else None


def _count(value: str | None, limit: int = 1000) -> int:
    """A count carried in an attribute anyone could have set: an integer in [0, limit], else 0."""
    try:
        return min(limit, max(0, int(value or 0)))
    except ValueError:
        return 0


def _message_id(value: str | None) -> str | None:
    return value if value and len(value) <= 100 and value.replace("-", "").isalnum() else None


@dataclass
class Services:
    """Everything long-lived a stage may use, opened once per process."""

    settings: FleetSettings
    aws: AwsClients
    metrics: Metrics
    jobs: JobStore


@dataclass
class Context:
    worker: str
    message: Message
    services: Services
    tuning: WorkerTuning
    queue: str = ""  # the name of the queue the message came from
    # The job this message may record on: its `fleet.job-id`, once the job record confirmed this queue may
    # touch it (JobsMiddleware). None for a message without a job, or one claiming a job it may not touch.
    job_id: str | None = None
    job_kind: str | None = None
    job_terminal: bool = False  # this worker's outcome is the job's final status

    @property
    def attempt(self) -> int:
        return self.message.attempt


class Stage(Protocol[M]):
    """A pipeline stage. `name` is the worker name (its queue comes from its `WorkerSpec`).

    `parse` turns a raw body into the stage's message or raises `Poison`; `handle` does the work and
    raises `Retry`/`Fatal` (or anything else, treated as retryable) to say how it failed.
    """

    name: str

    def parse(self, body: str) -> M: ...

    async def handle(self, message: M, ctx: Context) -> None: ...


@runtime_checkable
class Ticking(Protocol):
    """A stage with time-driven work (flush a partial batch, sweep an outbox) besides its messages.

    The runtime calls `tick()` every `tick_interval` seconds while the worker runs. It returns True
    while work is still pending, so a `--burst` worker does not exit before that work is done.
    """

    tick_interval: float

    async def tick(self) -> bool: ...


def validate(model: type[M], body: Any) -> M:
    """Validate a parsed body against a stage's model; a failure is a poison message."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise Poison(f"invalid message: {where}: {first['msg']}{more}", code="INVALID") from None


def parse_body(model: type[M], body: str) -> M:
    return validate(model, unwrap(body))
