"""How the stream consumer reads, leases and checkpoints (`FLEET_STREAM_*`, for every stream worker)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamTuning(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_STREAM_", extra="ignore", validate_default=True)

    lease_seconds: float = Field(
        10.0, gt=0, le=600, description="a lease not renewed for this long is expired and may be taken over"
    )
    renew_seconds: float | None = Field(
        None, gt=0, description="how often leases are renewed and balanced (default: a third of lease_seconds)"
    )
    sync_seconds: float = Field(10.0, gt=0, le=3600, description="how often the shard list is read (reshards)")
    max_records: int = Field(10_000, ge=1, le=10_000, description="records per GetRecords call (as KCL)")
    idle_seconds: float = Field(
        0.5, ge=0.2, le=10, description="wait between reads of a caught-up shard (AWS allows 5 reads/s per shard)"
    )
    checkpoint_seconds: float = Field(
        2.0, ge=0, le=300, description="at most one checkpoint write per shard this often"
    )
    max_pending_records: int = Field(
        20_000, ge=1, description="records read from a shard but not yet durable before its reader waits"
    )
    initial_position: Literal["TRIM_HORIZON", "LATEST"] = Field(
        "TRIM_HORIZON", description="where a shard without a checkpoint is read from"
    )

    @model_validator(mode="after")
    def _renew_within_lease(self) -> Self:
        if self.renew_seconds is not None and self.renew_seconds >= self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds}) must be shorter than lease_seconds ({self.lease_seconds})"
            )
        return self

    @property
    def renew_interval(self) -> float:
        return self.renew_seconds or self.lease_seconds / 3
