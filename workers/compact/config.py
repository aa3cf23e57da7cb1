"""Compact's own settings (`FLEET_COMPACT_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class CompactConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_COMPACT_", extra="ignore", validate_default=True)

    read_concurrency: int = Field(4, ge=1, le=64, description="source files read at once")
    chunk_bytes: int = Field(1 * MiB, ge=64 * 1024, description="bytes per read from a source stream")
    parse_bytes: int = Field(4 * MiB, ge=64 * 1024, description="bytes handed to a parsing thread at once")
    batch_rows: int = Field(10_000, ge=100, description="rows per Parquet record batch")
    max_line_bytes: int = Field(16 * MiB, ge=1024, description="a longer line is quarantined")
    max_columns: int = Field(2000, ge=1, description="distinct top-level fields a manifest may have")
    multipart_threshold: int = Field(64 * MiB, ge=5 * MiB, description="larger outputs upload in parts")
    source_buckets: list[str] | None = Field(
        None, description="buckets a manifest may list (default: the landing bucket)"
    )
