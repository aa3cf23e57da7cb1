"""The finalizer's own settings (env prefix `FLEET_FINALIZER_`), next to the fleet-wide `FleetSettings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FinalizerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_FINALIZER_", extra="ignore")

    tracking_max_attempts: int = Field(3, ge=1, le=10, description="tries of the fleet-jobs update")
    tracking_retry_base: float = Field(
        1.0, ge=0, le=60, description="seconds before the 2nd try; doubles per try (1 s, 2 s, 4 s...)"
    )
    tracking_retry_jitter: float = Field(0.3, ge=0, le=10, description="up to this many seconds added")
    tracking_read_timeout: float = Field(10.0, gt=0, le=120, description="per-call timeout of the update")
    download_links: Literal["console", "presigned"] = Field(
        "console",
        description=(
            "S3 console links need a console login and never expire; presigned GET URLs work for anyone "
            "holding them but expire, and no later than the signing credentials (hours on ECS task roles)"
        ),
    )
    presign_expires_seconds: int = Field(24 * 3600, ge=60, le=7 * 24 * 3600)
    presign_buckets: list[str] | None = Field(
        None,
        description=(
            "buckets whose objects may get a presigned URL (default: the fleet's own declared buckets); an "
            "event naming any other bucket gets a console link, which needs the reader's own access"
        ),
    )
    topic_arn: str | None = Field(
        None, description="the notifications topic's ARN; default: looked up by name (sns:ListTopics)"
    )
