"""What a media file holds (duration, streams, resolution) and where its keyframes are, read over HTTP
with the same whitelists as the render: with ffprobe when there is one, else with PyAV (libav* in-process,
in a thread). Either reads only the container index and a few packets, not the media."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from workers.clips import process
from workers.clips.command import input_options


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float | None
    codec: str
    duration: float | None = None  # the stream's own, seconds

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int
    channels: int
    duration: float | None = None


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    duration: float | None  # seconds
    video: VideoInfo | None
    audio: AudioInfo | None
    keyframes: dict[float, float] = field(default_factory=dict)  # asked time → keyframe at or before it

    @property
    def media_duration(self) -> float | None:
        """The video's length when there is video (the container's also counts audio priming and padding)."""
        for stream in (self.video, self.audio):
            if stream is not None and stream.duration:
                return stream.duration
        return self.duration


class ProbeError(Exception):
    """The file cannot be read as media (corrupt, not an allowed format, or not there)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class Prober:
    def __init__(self, ffprobe: str | None, *, timeout: float, request_size: int = 0) -> None:
        self.ffprobe = ffprobe
        self.timeout = timeout
        self.options = input_options(request_size)

    async def probe(self, url: str, keyframes_at: Sequence[float] = ()) -> MediaInfo:
        """Probe `url`; for each time in `keyframes_at`, also find the keyframe at or before it."""
        if self.ffprobe:
            return await self._ffprobe(url, keyframes_at)
        try:
            return await asyncio.wait_for(asyncio.to_thread(_pyav_probe, url, self.options, keyframes_at), self.timeout)
        except TimeoutError:
            raise ProbeError(f"probe timed out after {self.timeout:g}s") from None

    # --- ffprobe -------------------------------------------------------------------------------------

    async def _ffprobe(self, url: str, keyframes_at: Sequence[float]) -> MediaInfo:
        assert self.ffprobe is not None
        base = [self.ffprobe, "-hide_banner", "-v", "error", *_flags(self.options)]
        data = await self._json([*base, "-show_format", "-show_streams", "-of", "json", url])
        streams = data.get("streams", [])
        video = next((s for s in streams if s.get("codec_type") == "video" and not _attached_pic(s)), None)
        audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
        fmt = data.get("format", {})
        start = float(fmt.get("start_time") or 0)
        keyframes: dict[float, float] = {}
        if video is not None:
            for at in keyframes_at:
                packets = await self._json(
                    [
                        *base,
                        "-select_streams",
                        f"{video['index']}",
                        "-read_intervals",
                        f"{at + start:.6f}%+#1",
                        "-show_entries",
                        "packet=pts_time,flags",
                        "-of",
                        "json",
                        url,
                    ]
                )
                first = next(iter(packets.get("packets", [])), None)
                if first and "K" in first.get("flags", "") and first.get("pts_time") not in (None, "N/A"):
                    keyframes[at] = float(first["pts_time"]) - start
        return MediaInfo(
            format_name=str(fmt.get("format_name", "")),
            duration=_seconds(fmt.get("duration")),
            video=VideoInfo(
                width=int(video["width"]),
                height=int(video["height"]),
                fps=_rate(video.get("avg_frame_rate")),
                codec=str(video.get("codec_name", "")),
                duration=_seconds(video.get("duration")),
            )
            if video
            else None,
            audio=AudioInfo(
                codec=str(audio.get("codec_name", "")),
                sample_rate=int(audio.get("sample_rate") or 0),
                channels=int(audio.get("channels") or 0),
                duration=_seconds(audio.get("duration")),
            )
            if audio
            else None,
            keyframes=keyframes,
        )

    async def _json(self, argv: list[str]) -> dict[str, Any]:
        try:
            out = await process.run(argv, time_limit=self.timeout)
        except process.FfmpegError as exc:
            raise ProbeError(exc.stderr_tail or exc.reason, not_found="404" in exc.stderr_tail) from None
        parsed: dict[str, Any] = json.loads(out or b"{}")
        return parsed


def _flags(options: dict[str, str]) -> list[str]:
    return [item for key, value in options.items() for item in (f"-{key}", value)]


def _seconds(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # absent, or "N/A"
        return None


def _attached_pic(stream: dict[str, Any]) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _rate(value: str | None) -> float | None:
    try:
        rate = Fraction(value or "")
    except (ValueError, ZeroDivisionError):
        return None
    return float(rate) if rate > 0 else None


# --- PyAV ------------------------------------------------------------------------------------------------


def _pyav_probe(url: str, options: dict[str, str], keyframes_at: Sequence[float]) -> MediaInfo:
    import av

    try:
        container = av.open(url, options=dict(options), timeout=30)
    except av.error.HTTPNotFoundError as exc:
        raise ProbeError(f"source not found: {exc.strerror}", not_found=True) from None
    except (av.error.FFmpegError, OSError) as exc:
        raise ProbeError(str(getattr(exc, "strerror", None) or exc)) from None
    with container:
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        v = videos[0] if videos else None
        a = container.streams.audio[0] if container.streams.audio else None
        start = (container.start_time or 0) / 1_000_000
        keyframes: dict[float, float] = {}
        if v is not None and v.time_base is not None:
            for at in keyframes_at:
                try:
                    container.seek(int((at + start) / v.time_base), stream=v, backward=True, any_frame=False)
                    packet = next((p for p in container.demux(v) if p.pts is not None), None)
                except (av.error.FFmpegError, StopIteration):
                    continue
                if packet is not None and packet.is_keyframe and packet.pts is not None:
                    keyframes[at] = float(packet.pts * v.time_base) - start
        return MediaInfo(
            format_name=container.format.name,
            duration=container.duration / 1_000_000 if container.duration else None,
            video=VideoInfo(
                width=v.codec_context.width,
                height=v.codec_context.height,
                fps=float(v.average_rate) if v.average_rate else None,
                codec=v.codec_context.name,
                duration=_stream_seconds(v),
            )
            if v is not None
            else None,
            audio=AudioInfo(
                codec=a.codec_context.name,
                sample_rate=a.sample_rate or 0,
                channels=a.channels or 0,
                duration=_stream_seconds(a),
            )
            if a is not None
            else None,
            keyframes=keyframes,
        )


def _stream_seconds(stream: Any) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)
