"""One settings object for the whole fleet, read from `FLEET_*` environment variables.

Nested values use `__`: `FLEET_WORKERS__CLIPS__CONCURRENCY=2`, `FLEET_QUEUES__INGEST=my-ingest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal, Self, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.resources import REDRIVE_MAX_RECEIVE_COUNT

if TYPE_CHECKING:
    from shared.resources import Resource


# SQS's 12 h visibility limit since receipt, less a margin for the calls that settle a message.
MAX_HIDDEN = 43_000


class WorkerTuning(BaseModel):
    """How one worker consumes its queue."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(10, ge=1, le=1000, description="messages handled at once")
    batch_size: int = Field(10, ge=1, le=10, description="messages per ReceiveMessage")
    # 0 would be short polling: on an empty queue, thousands of empty receives a minute, each one billed.
    wait_time_seconds: int = Field(20, ge=1, le=20, description="long-poll wait")
    visibility_timeout: int = Field(30, ge=1, le=43_200, description="seconds a received message stays hidden")
    heartbeat_interval: float | None = Field(
        None, gt=0, description="seconds between visibility extensions (default: a third of the timeout)"
    )
    handler_timeout: float = Field(
        900.0, gt=0, le=MAX_HIDDEN, description="a handler running longer is cancelled and retried"
    )
    max_attempts: int = Field(5, ge=1, le=REDRIVE_MAX_RECEIVE_COUNT)
    backoff_base: float = Field(2.0, ge=0, description="first retry delay, seconds; doubles per attempt")
    backoff_max: float = Field(900.0, ge=0, le=MAX_HIDDEN, description="longest retry delay, seconds")
    drain_timeout: float = Field(25.0, ge=0, le=120, description="seconds to finish in-flight work on SIGTERM")
    burst_idle_seconds: float = Field(
        2.0, ge=0, description="in --burst mode, exit after the queue stayed empty this long"
    )

    @model_validator(mode="after")
    def _fits_sqs_visibility_limit(self) -> Self:
        # The heartbeat can keep a message hidden at most 12 h after it was received: the handler's time
        # plus one more visibility timeout (to settle it) must fit in that.
        if self.handler_timeout + self.visibility_timeout > MAX_HIDDEN:
            raise ValueError(
                f"handler_timeout ({self.handler_timeout:g}s) + visibility_timeout ({self.visibility_timeout}s) "
                f"must fit in {MAX_HIDDEN}s: SQS hides a message at most 12 h after it was received"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_below_visibility(self) -> Self:
        if self.heartbeat_interval is not None and self.heartbeat_interval >= self.visibility_timeout:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}s) must be shorter than "
                f"visibility_timeout ({self.visibility_timeout}s), or messages expire between beats"
            )
        return self

    @property
    def heartbeat_seconds(self) -> float:
        return self.heartbeat_interval or max(0.5, self.visibility_timeout / 3)

    @property
    def pool_size(self) -> int:
        # Long polls, heartbeats, deletes and the handler's own calls share one pool:
        # botocore's default of 10 would serialise them.
        return self.concurrency * 2 + 10


RENAME_FIELDS = ("queues", "tables", "buckets", "streams", "topics", "buses", "rules", "secrets")
ResourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]{1,200}$")]


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    region: str = Field("us-east-1", validation_alias=AliasChoices("FLEET_REGION", "AWS_DEFAULT_REGION"))
    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("FLEET_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="unset = real AWS; set for LocalStack or moto",
    )
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,20}$", description="prepended to every resource name")
    environment: str = Field("local", max_length=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text", "auto"] = Field(
        "auto", description="auto: readable text against an emulator (a local run), JSON on AWS"
    )
    log_successes: bool = Field(
        False, description="a log line per successful message (else a summary per worker every minute)"
    )
    metrics_mode: Literal["emf", "cloudwatch", "off", "auto"] = Field(
        "auto",
        description="auto: EMF lines on AWS; PutMetricData against an emulator (no EMF lines among the logs)",
    )
    metrics_namespace: str = "Fleet"
    health_dir: str = "/tmp/fleet-health"

    # Renames of declared resources, by key: FLEET_QUEUES__INGEST=files-in (see shared/resources.py).
    queues: dict[str, ResourceName] = Field(default_factory=dict)
    tables: dict[str, ResourceName] = Field(default_factory=dict)
    buckets: dict[str, ResourceName] = Field(default_factory=dict)
    streams: dict[str, ResourceName] = Field(default_factory=dict)
    topics: dict[str, ResourceName] = Field(default_factory=dict)
    buses: dict[str, ResourceName] = Field(default_factory=dict)
    rules: dict[str, ResourceName] = Field(default_factory=dict)
    secrets: dict[str, ResourceName] = Field(default_factory=dict)

    defaults: WorkerTuning = WorkerTuning()
    workers: dict[str, dict[str, object]] = Field(
        default_factory=dict, description="per-worker overrides of `defaults`, by worker name"
    )

    @field_validator("workers")
    @classmethod
    def _overrides_are_valid(
        cls, workers: dict[str, dict[str, object]], info: ValidationInfo
    ) -> dict[str, dict[str, object]]:
        defaults = info.data.get("defaults", WorkerTuning())
        problems = []
        for worker, overrides in workers.items():
            try:
                WorkerTuning.model_validate({**defaults.model_dump(), **overrides})
            except ValidationError as exc:
                for err in exc.errors():
                    field = ".".join(str(p) for p in err["loc"])
                    where = "__".join(
                        ["FLEET_WORKERS", worker, *field.split(".")] if field else ["FLEET_WORKERS", worker]
                    )
                    problems.append(f"{where.upper()}: {err['msg'].removeprefix('Value error, ')}")
        if problems:
            raise ValueError("; ".join(problems))
        return workers

    @model_validator(mode="after")
    def _local_defaults(self) -> Self:
        local = self.endpoint_url is not None
        if self.log_format == "auto":
            self.log_format = "text" if local else "json"
        if self.metrics_mode == "auto":
            self.metrics_mode = "cloudwatch" if local else "emf"
        return self

    @model_validator(mode="after")
    def _endpoint_is_url(self) -> Self:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must start with http:// or https://, got {self.endpoint_url!r}")
        return self

    def tuning(self, worker: str, declared: Mapping[str, object] | None = None) -> WorkerTuning:
        """Built-in defaults < `FLEET_DEFAULTS__*` < the worker's declared tuning < `FLEET_WORKERS__<NAME>__*`."""
        overrides = self.workers.get(worker, {})
        return WorkerTuning.model_validate({**self.defaults.model_dump(), **(declared or {}), **overrides})

    def name(self, raw: str) -> str:
        return f"{self.prefix}{raw}"

    def name_of(self, resource: Resource) -> str:
        return resource.name_in(self)

    def renames(self, kind: str) -> Mapping[str, str]:
        value = getattr(self, kind, None) if kind in RENAME_FIELDS else None
        return value if isinstance(value, dict) else {}

    @staticmethod
    def rename_fields() -> tuple[str, ...]:
        return RENAME_FIELDS


class ConfigError(Exception):
    """Settings that cannot work; raised at start-up with every problem listed."""


def config_error(exc: ValidationError, env_prefix: str = "FLEET_", nested: str = "__") -> ConfigError:
    """A settings ValidationError as one message naming each environment variable at fault."""
    problems = []
    for err in exc.errors():
        where = env_prefix + nested.join(str(p).upper() for p in err["loc"]) if err["loc"] else "settings"
        message = err["msg"].removeprefix("Value error, ")
        if message.startswith(env_prefix):  # already names its variables (per-worker overrides)
            problems += [f"  {part}" for part in message.split("; ")]
        else:
            problems.append(f"  {where}: {message}")
    return ConfigError("invalid configuration:\n" + "\n".join(problems))


def load_settings(**overrides: object) -> FleetSettings:
    try:
        return FleetSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise config_error(exc) from None


S = TypeVar("S", bound=BaseSettings)


def load_stage_settings(model: type[S]) -> S:
    """A stage's own settings (e.g. `FLEET_INGEST_*`), failing at start-up like the fleet's."""
    try:
        return model()
    except ValidationError as exc:
        raise config_error(exc, str(model.model_config.get("env_prefix", "")), "_") from None


def ceil_seconds(value: float) -> int:
    """SQS takes whole seconds; round up so a delay is never shorter than asked."""
    return max(0, math.ceil(value))
