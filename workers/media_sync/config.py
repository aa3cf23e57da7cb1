"""media-sync settings, from `FLEET_MEDIA_SYNC_*` environment variables (checked at start-up)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
S3_MAX_PARTS = 10_000


class MediaSyncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_MEDIA_SYNC_", extra="ignore")

    provider_url: str = Field(
        "http://127.0.0.1:8765", pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="the provider's base URL"
    )
    allow_loopback_http: bool = Field(
        False, description="allow download URLs on loopback addresses (http too): local runs and tests only"
    )
    trusted_hosts: str = Field(
        "",
        pattern=r"^[A-Za-z0-9.,-]*$",
        description="comma-separated host names downloads may reach on private addresses, over http too "
        "(a provider on a docker compose network); never set in production",
    )
    token_refresh_threshold_seconds: float = Field(
        24 * 3600, ge=0, description="refresh the access token when it expires within this (the seed's 24 h)"
    )
    page_size: int = Field(100, ge=1, le=1000, description="media per listing page")
    part_size: int = Field(16 * MiB, ge=S3_MIN_PART, le=S3_MAX_PART, description="bytes per multipart part")
    parts_in_flight: int = Field(4, ge=1, le=64, description="part buffers alive at once (memory bound)")
    multipart_threshold: int = Field(16 * MiB, ge=0, description="below this size, one PutObject")
    max_object_bytes: int = Field(50 * GiB, ge=1, description="larger media are refused")
    key_prefix: str = Field("videos/", pattern=r"^[A-Za-z0-9!_.*'()/-]{0,200}$")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0, description="seconds without a byte before a read fails")
    request_attempts: int = Field(4, ge=1, le=10, description="tries per provider API call (429, 5xx, network)")
    retry_base_seconds: float = Field(0.5, ge=0, description="first retry delay; doubles per attempt")
    max_retry_after_seconds: float = Field(
        60.0, ge=0, description="a longer Retry-After ends the attempt; the message retries after it instead"
    )
    stream_resumes: int = Field(3, ge=0, le=20, description="in-process Range resumes after a dropped download")
    batch_get_retries: int = Field(3, ge=0, le=10, description="BatchGetItem retries of UnprocessedKeys")
    batch_get_backoff_seconds: float = Field(1.0, ge=0, description="the seed's 1 s, 2 s, 4 s")
    send_concurrency: int = Field(8, ge=1, le=64, description="SendMessageBatch calls in flight while syncing")
    max_pages: int = Field(100_000, ge=1, description="a listing longer than this is refused (a looping provider)")

    @model_validator(mode="after")
    def _memory_is_bounded(self) -> Self:
        budget = self.part_size * self.parts_in_flight
        if self.multipart_threshold > budget:
            raise ValueError(
                f"multipart_threshold ({self.multipart_threshold}) must not exceed part_size x parts_in_flight "
                f"({budget}): a single PUT buffers the whole object"
            )
        if self.max_object_bytes > self.part_size * S3_MAX_PARTS:
            raise ValueError(
                f"max_object_bytes ({self.max_object_bytes}) needs more than {S3_MAX_PARTS} parts of "
                f"{self.part_size} bytes; raise part_size"
            )
        return self

    @property
    def trusted(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.trusted_hosts.split(",") if h.strip())

    @property
    def memory_budget(self) -> int:
        return self.part_size * self.parts_in_flight
