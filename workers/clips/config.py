"""The clips worker's own settings (env prefix `FLEET_CLIPS_`), next to the fleet-wide `FleetSettings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class ClipsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_CLIPS_", extra="ignore")

    ffmpeg: str | None = Field(
        None, description="ffmpeg binary; default: `ffmpeg` on PATH, else the imageio-ffmpeg wheel's static build"
    )
    ffprobe: str | None = Field(None, description="ffprobe binary; default: `ffprobe` on PATH, else PyAV probes")
    preset: str = Field("veryfast", pattern=r"^[a-z]{4,10}$", description="libx264 preset of the re-encode")
    crf: int = Field(20, ge=0, le=51, description="libx264 quality (lower = better, bigger)")
    audio_bitrate: str = Field("128k", pattern=r"^\d{2,3}k$")
    fast_mode: Literal["auto", "off"] = Field(
        "off",
        description=(
            "auto: stream-copy (no re-encode) when every cut lies on a keyframe — video frame-exact, audio to "
            "within one AAC frame (~21 ms) per segment; off: always re-encode, frame- and sample-exact"
        ),
    )
    max_segments: int = Field(20, ge=1, le=200, description="segments per clip")
    max_clip_seconds: float = Field(600.0, gt=0, le=6 * 3600, description="summed length of a clip's segments")
    max_clips: int = Field(500, ge=1, le=10_000, description="clips per Begin Clip Generation event")
    ffmpeg_timeout: float = Field(1800.0, gt=0, description="seconds one ffmpeg run may take in all")
    stall_timeout: float = Field(
        60.0, gt=0, description="seconds without ffmpeg progress before it is killed (and the job retried)"
    )
    probe_timeout: float = Field(60.0, gt=0, description="seconds a probe of the source or the clip may take")
    part_size: int = Field(
        8 * MIB, ge=5 * MIB, le=512 * MIB, description="multipart part size; larger outputs go up in parts"
    )
    presign_expires: int = Field(3600, ge=60, le=7 * 24 * 3600, description="lifetime of ffmpeg's source URL")
    request_size: int = Field(
        MIB, ge=0, description="bytes per HTTP range request ffmpeg makes (0: its default, open-ended ranges)"
    )
    progress_interval: float = Field(2.0, gt=0, description="seconds between progress writes to the clip item")
