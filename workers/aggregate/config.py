"""The aggregate worker's own settings (`FLEET_AGGREGATE_*`)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AggregateConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_AGGREGATE_", extra="ignore", validate_default=True)

    flush_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="every this often, each entity with enough pending events is written"
    )
    flush_min_events: int = Field(
        16, ge=1, le=100_000, description="an entity with this many pending events is written at the next flush"
    )
    max_delay_seconds: float = Field(
        5.0, ge=0, le=300, description="no event waits longer than this (plus one flush) to be written"
    )
    max_pending_events: int = Field(
        50_000, ge=100, description="events held in memory before readers wait and everything is written"
    )
    write_concurrency: int = Field(16, ge=1, le=256, description="entity writes in flight at once")
    alert_cooldown_seconds: float = Field(
        3600.0, ge=0, description="the same alert for the same entity is not sent again within this"
    )
    seen_retention_days: int = Field(
        35, ge=1, le=3650, description="how long an event_id is remembered (a later replay counts again)"
    )
    max_future_seconds: float = Field(
        300.0, ge=0, description="an event stamped further ahead of its arrival than this is refused"
    )
    remembered_event_ids: int = Field(200_000, ge=0, description="event ids kept in memory to drop duplicates")
    entity_cache: int = Field(20_000, ge=1, description="entity items kept in memory between writes")

    @model_validator(mode="after")
    def _delay_covers_interval(self) -> Self:
        if self.max_delay_seconds and self.max_delay_seconds < self.flush_interval_seconds:
            raise ValueError("max_delay_seconds must be 0 or at least flush_interval_seconds")
        return self
