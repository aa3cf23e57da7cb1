"""The finalizer's input: the success and failure events of seeds/000 §3, unchanged.

Everything in an event ends up in an e-mail, a DynamoDB item or a metric, so it is validated before
anything reads it: the execution id is a canonical UUID, statuses come from fixed sets, every string is
capped, numbers are finite and bounded, and S3 URIs must be `s3://bucket/key` with a valid bucket name
and only S3's "safe" key characters (they become links in notifications). A failure is a `Poison`
message, dead-lettered by the runtime with the offending field in its reason.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

EventStatus = Literal["COMPLETED", "FAILED"]
StageStatus = Literal["COMPLETED", "PARTIAL", "FAILED"]
FinalStatus = Literal["COMPLETED", "PARTIAL_SUCCESS", "FAILED"]

MAX_TEXT = 4096  # any string not capped tighter below
MAX_KEY = 1024  # S3's own limit for object keys
MAX_STAGES = 32
MAX_EXTRA_FIELDS = 32
MAX_LIST = 100
MAX_SECONDS = 366 * 24 * 3600.0  # a job that ran for over a year is a corrupt timestamp

_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)(?!.*-s3alias$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3's "safe characters" (AWS object-key naming guidelines), plus "/" as the delimiter and "=" for
# partitioned layouts. Anything else could break a link or smuggle markup into an e-mail.
_KEY = re.compile(r"^[A-Za-z0-9!_.*'()/=-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# JSON may carry lone surrogates ("\\ud800"); they cannot be encoded as UTF-8 for SNS or DynamoDB.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_s3_uri(value: str) -> str:
    if not value.startswith("s3://"):
        raise ValueError("must be an s3://bucket/key URI")
    bucket, _, key = value[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket[:64]!r}")
    if not key or len(key.encode()) > MAX_KEY:
        raise ValueError("S3 key must be 1 to 1024 bytes")
    if not _KEY.match(key):
        raise ValueError("S3 key may only contain letters, digits, / and !_.*'()=-")
    if key.startswith("/") or "//" in key or any(part in (".", "..") for part in key.split("/")):
        raise ValueError("S3 key has an empty, '.' or '..' path segment")
    return value


def split_s3_uri(value: str) -> tuple[str, str]:
    bucket, _, key = value[5:].partition("/")
    return bucket, key


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value


def _encodable(value: str) -> str:
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (no lone surrogates)")
    return value


def _canonical_uuid(value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError("must be a UUID like 550e8400-e29b-41d4-a716-446655440000") from None
    if str(parsed) != value.lower():  # reject braces, urn: and hyphen-less forms: one id, one spelling
        raise ValueError("must be a UUID in its canonical 8-4-4-4-12 form")
    return str(parsed)


def _bucket(value: str) -> str:
    if not _BUCKET.match(value):
        raise ValueError("invalid S3 bucket name")
    return value


S3Uri = Annotated[str, StringConstraints(max_length=5 + 63 + 1 + MAX_KEY), AfterValidator(check_s3_uri)]
ExecutionId = Annotated[str, StringConstraints(max_length=36), AfterValidator(_canonical_uuid)]
StageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
ShortText = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_control)]
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY), AfterValidator(_no_control)]
BucketName = Annotated[str, StringConstraints(max_length=63), AfterValidator(_bucket)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
Count = Annotated[int, Field(ge=0, le=10**12)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False, str_max_length=MAX_TEXT)


class StageResult(_Strict):
    """One entry of `processing_results`. The fields the seed's pipeline reports are typed; other
    pipelines may add their own flat fields (`*_uri` ones are checked as S3 URIs and become links)."""

    model_config = ConfigDict(extra="allow")

    status: StageStatus
    duration_seconds: Seconds | None = None
    speakers_detected: int | None = Field(None, ge=0, le=10_000)
    transcript_uri: S3Uri | None = None
    documents_generated: list[ShortText] | None = Field(None, max_length=MAX_LIST)
    output_uri: S3Uri | None = None
    document_size_bytes: Count | None = None
    tokens_used: Count | None = None
    processing_time_seconds: Seconds | None = None

    @model_validator(mode="after")
    def _extra_fields_are_flat_and_small(self) -> Self:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_FIELDS:
            raise ValueError(f"at most {MAX_EXTRA_FIELDS} extra fields per stage")
        for name, value in extra.items():
            if not _FIELD.match(name):
                raise ValueError(f"field name {name[:64]!r} must be snake_case, at most 64 characters")
            _check_extra(name, value)
        return self

    def uris(self) -> list[str]:
        """This stage's outputs, the primary one first."""
        found = [u for u in (self.output_uri, self.transcript_uri) if u]
        found += [v for k, v in (self.model_extra or {}).items() if k.endswith("_uri") and v]
        return found


def _check_extra(name: str, value: Any) -> None:
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ValueError(f"{name}: at most {MAX_LIST} items")
        for item in value:
            _check_scalar(name, item, max_len=256)
    else:
        _check_scalar(name, value, max_len=2048)
        if name.endswith("_uri") and value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{name}: must be an s3:// URI")
            try:
                check_s3_uri(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def _check_scalar(name: str, value: Any, *, max_len: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > 10**15:
            raise ValueError(f"{name}: number out of range")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e15:
            raise ValueError(f"{name}: number out of range")
    elif isinstance(value, str):
        if len(value) > max_len:
            raise ValueError(f"{name}: at most {max_len} characters")
        if _SURROGATE.search(value):
            raise ValueError(f"{name}: must be valid Unicode (no lone surrogates)")
    else:
        raise ValueError(f"{name}: only strings, numbers, booleans or flat lists of them are accepted")


class ErrorInfo(_Strict):
    model_config = ConfigDict(extra="ignore")

    stage: StageName | None = None
    error_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    error_message: Annotated[str, Field(max_length=2048), AfterValidator(_encodable)] = ""
    timestamp: datetime | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)


class Timestamps(_Strict):
    model_config = ConfigDict(extra="ignore")

    started_at: datetime | None = None
    completed_at: datetime | None = None

    @field_validator("started_at", "completed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.started_at and self.completed_at:
            seconds = (self.completed_at - self.started_at).total_seconds()
            if seconds < 0:
                raise ValueError("completed_at is before started_at")
            if seconds > MAX_SECONDS:
                raise ValueError("the job ran for over a year: a timestamp is wrong")
        return self


class FinalEvent(_Strict):
    """A success or failure event. Unknown top-level fields are ignored (pipelines may add context)."""

    model_config = ConfigDict(extra="ignore")

    execution_id: ExecutionId
    status: EventStatus
    video_key: ObjectKey | None = None
    bucket: BucketName | None = None
    processing_results: dict[StageName, StageResult] = Field(default_factory=dict, max_length=MAX_STAGES)
    timestamps: Timestamps = Field(default_factory=Timestamps)
    error: ErrorInfo | None = None


def as_utc(value: datetime | None) -> datetime | None:
    """Naive timestamps are taken as UTC (the seed's own examples end in Z)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
