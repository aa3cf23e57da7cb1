"""Events as seed 004 defines them, validated, and what each one contributes to which entity.

An event is untrusted: ids are 1-256 characters without control characters, numbers are finite and
bounded, the timestamp is ISO-8601 (UTC when it has no offset) and not further ahead of the record's
arrival than `max_future_seconds` (a clock a year ahead would otherwise end every window of its entity).
Unknown fields are ignored; an unknown event type, a missing id or a bad value makes the event poison.

Contributions (the seed's meaning, its bugs left out):
- `session_started`, `session_completed`: one session for the student and one for the tutor (as in the seed,
  both event types count); a completed session's `tutor_rating` (0-5) goes into the tutor's rating mean;
- `ib_call_logged`: one IB call for the student;
- `customer_health_update`: the student's health snapshot (the newest by event time wins): `health_score`,
  and the upstream's own counts, kept as `reported_*` (the windows stay counted from events);
- `supply_demand_update`: the subject's supply snapshot (newest wins): region, tutors, students, scores,
  balance status.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from shared.errors import Poison

EventType = Literal[
    "session_started", "session_completed", "ib_call_logged", "customer_health_update", "supply_demand_update"
]
EntityType = Literal["student", "tutor", "subject"]

MAX_EVENT_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_printable)]
Text = Annotated[str, StringConstraints(max_length=64), AfterValidator(_printable)]
Count = Annotated[int, Field(ge=0, le=10_000_000)]
Score = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class SessionPayload(_Payload):
    student_id: Id | None = None
    tutor_id: Id | None = None
    tutor_rating: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _someone(self) -> SessionPayload:
        if self.student_id is None and self.tutor_id is None:
            raise ValueError("a session needs a student_id or a tutor_id")
        return self


class IbCallPayload(_Payload):
    student_id: Id


class HealthPayload(_Payload):
    student_id: Id
    health_score: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    sessions_last_7_days: Count | None = None
    sessions_last_30_days: Count | None = None
    ib_calls_last_14_days: Count | None = None


class SupplyPayload(_Payload):
    subject: Id
    region: Text | None = None
    available_tutors: Count | None = None
    active_students: Count | None = None
    demand_score: Score | None = None
    supply_score: Score | None = None
    balance_status: Text | None = None


PAYLOADS: dict[str, type[_Payload]] = {
    "session_started": SessionPayload,
    "session_completed": SessionPayload,
    "ib_call_logged": IbCallPayload,
    "customer_health_update": HealthPayload,
    "supply_demand_update": SupplyPayload,
}


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: EventType
    timestamp: Annotated[str, StringConstraints(min_length=10, max_length=40)]
    payload: dict[str, Any]
    ingested_at: Annotated[str, StringConstraints(max_length=40)] | None = None
    event_id: Id | None = None


@dataclass(frozen=True)
class Event:
    event_type: str
    at: datetime  # UTC
    payload: _Payload
    event_id: str | None
    raw: dict[str, Any]  # as received (forwarded as is)


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"timestamp {value[:40]!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if not 2000 <= parsed.year <= 2200:
        raise ValueError(f"timestamp {value[:40]!r} is out of range")
    return parsed


def validate_event(data: Any, *, now: float, max_future_seconds: float) -> Event:
    """A validated event, or `Poison` naming the field at fault. `now`: the record's arrival (epoch s)."""
    if not isinstance(data, dict):
        raise Poison(f"an event must be a JSON object, got {type(data).__name__}", code="INVALID")
    try:
        envelope = _Envelope.model_validate(data)
        payload = PAYLOADS[envelope.event_type].model_validate(envelope.payload)
        at = parse_time(envelope.timestamp)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        if first["loc"] and first["loc"][0] not in _Envelope.model_fields:
            where = f"payload.{where}"
        raise Poison(f"invalid event: {where}: {first['msg']}", code="INVALID") from None
    except ValueError as exc:
        raise Poison(f"invalid event: timestamp: {exc}", code="INVALID") from None
    if at.timestamp() > now + max_future_seconds:
        raise Poison(f"invalid event: timestamp {envelope.timestamp} is in the future", code="FUTURE")
    return Event(envelope.event_type, at, payload, envelope.event_id, data)


def parse_event(text: str | bytes, *, now: float, max_future_seconds: float) -> Event:
    if len(text) > MAX_EVENT_BYTES:
        raise Poison(f"event is {len(text)} bytes, over the {MAX_EVENT_BYTES}-byte limit", code="TOO_LARGE")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Poison(f"event is not JSON: {exc}", code="NOT_JSON") from None
    return validate_event(data, now=now, max_future_seconds=max_future_seconds)


# --- contributions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class EntityKey:
    entity_type: str
    entity_id: str


@dataclass(frozen=True)
class Snapshot:
    """A state reported by an event; the newest by (event time, content digest) wins, whatever the order of arrival."""

    at: datetime
    digest: str
    fields: tuple[tuple[str, Any], ...]  # attribute -> value (str | int | Decimal)

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.at, self.digest)


@dataclass(frozen=True)
class Contribution:
    entity: EntityKey
    at: datetime
    sessions: int = 0
    ib_calls: int = 0
    rating: Decimal | None = None
    health: Snapshot | None = None
    supply: Snapshot | None = None


def _decimal(value: float) -> Decimal:
    assert math.isfinite(value)
    return Decimal(repr(value)).normalize() if value != int(value) else Decimal(int(value))


def _snapshot(event: Event, fields: dict[str, Any]) -> Snapshot:
    kept = tuple(sorted((k, v) for k, v in fields.items() if v is not None))
    digest = hashlib.sha256(json.dumps([event.at.isoformat(), kept], default=str).encode()).hexdigest()[:16]
    return Snapshot(event.at, digest, kept)


def contributions(event: Event) -> list[Contribution]:
    p = event.payload
    at = event.at
    if isinstance(p, SessionPayload):
        out = []
        if p.student_id is not None:
            out.append(Contribution(EntityKey("student", p.student_id), at, sessions=1))
        if p.tutor_id is not None:
            rating = None
            if event.event_type == "session_completed" and p.tutor_rating is not None:
                rating = _decimal(p.tutor_rating)
            out.append(Contribution(EntityKey("tutor", p.tutor_id), at, sessions=1, rating=rating))
        return out
    if isinstance(p, IbCallPayload):
        return [Contribution(EntityKey("student", p.student_id), at, ib_calls=1)]
    if isinstance(p, HealthPayload):
        health = _snapshot(
            event,
            {
                "health_score": _decimal(p.health_score),
                "reported_sessions_7d": p.sessions_last_7_days,
                "reported_sessions_30d": p.sessions_last_30_days,
                "reported_ib_calls_14d": p.ib_calls_last_14_days,
            },
        )
        return [Contribution(EntityKey("student", p.student_id), at, health=health)]
    if isinstance(p, SupplyPayload):
        supply = _snapshot(
            event,
            {
                "region": p.region,
                "available_tutors": p.available_tutors,
                "active_students": p.active_students,
                "demand_score": _decimal(p.demand_score) if p.demand_score is not None else None,
                "supply_score": _decimal(p.supply_score) if p.supply_score is not None else None,
                "balance_status": p.balance_status,
            },
        )
        return [Contribution(EntityKey("subject", p.subject), at, supply=supply)]
    raise AssertionError(f"no contribution rule for {type(p).__name__}")


def partition_key(event: Event) -> str:
    """The event's first entity: a student's (or tutor's, or subject's) events share a shard and keep their
    order, and a replayed event lands where its first copy did."""
    p = event.payload
    for name in ("student_id", "tutor_id", "subject"):
        value = getattr(p, name, None)
        if isinstance(value, str):
            return value[:256]
    raise AssertionError("a valid event always names an entity")
