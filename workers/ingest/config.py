"""Ingest's own settings (`FLEET_INGEST_*`), separate from the fleet-wide ones: only this worker reads them."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# A manifest record lists its candidates (at most 1.25 × the batch, ≤ ~1 KB each with the longest
# keys accepted) and a DynamoDB item holds at most 400 KB.
MAX_BATCH = 300


class IngestConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_INGEST_", extra="ignore", validate_default=True)

    batch_size: int = Field(200, ge=1, le=MAX_BATCH, description="files per manifest")
    max_wait_seconds: float = Field(
        300.0, ge=0, description="a partial batch is flushed once its oldest file has waited this long"
    )
    check_interval_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="a worker counts a date's pending files at most this often, however fast files arrive",
    )
    tick_seconds: float = Field(5.0, gt=0, le=300, description="how often flushes by age and the outbox sweeper run")
    lease_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="an open manifest untouched for this long is finished by the sweeper",
    )
    landing_prefix: str = Field("incoming/", pattern=r"^[A-Za-z0-9._-]+/$")
    allowed_buckets: list[str] | None = Field(
        None, description="buckets whose notifications are accepted (default: the landing bucket)"
    )
