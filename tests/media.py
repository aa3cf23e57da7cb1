"""Small media for the clips tests, generated once per session with the same ffmpeg the worker runs.

Low resolution and a few seconds each, with a 1 s keyframe interval (so whole-second cuts are
keyframe-aligned): the tests assert frame-exact behaviour, not quality, and stay fast."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from workers.clips.binaries import find_tools
from workers.clips.sample import generate_source

FPS = 25
SIZE = "320x240"


@dataclass(frozen=True)
class Media:
    ffmpeg: str
    with_audio: Path  # 12 s, video + audio
    video_only: Path  # 6 s
    audio_only: Path  # 6 s, AAC in MP4
    segment_ts: Path  # 2 s MPEG-TS: what a hostile playlist would point ffmpeg at


@pytest.fixture(scope="session", name="media")
def media_fixture(tmp_path_factory: pytest.TempPathFactory) -> Media:
    folder = tmp_path_factory.mktemp("media")
    ffmpeg = find_tools().ffmpeg

    async def make() -> Media:
        common = {"size": SIZE, "fps": FPS, "keyframe_seconds": 1}
        made = await asyncio.gather(
            generate_source(ffmpeg, folder / "av.mp4", seconds=12, **common),
            generate_source(ffmpeg, folder / "video.mp4", seconds=6, audio=False, **common),
            generate_source(ffmpeg, folder / "audio.m4a", seconds=6, video=False, **common),
        )
        ts = folder / "secret.ts"
        proc = await asyncio.create_subprocess_exec(
            ffmpeg,
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(made[0]),
            "-t",
            "2",
            "-c",
            "copy",
            str(ts),
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert await proc.wait() == 0
        return Media(ffmpeg, *made, segment_ts=ts)

    return asyncio.run(make())


@dataclass(frozen=True)
class ClipFacts:
    """What a rendered clip really holds, read back with PyAV (decoded, not taken from headers)."""

    video_frames: int
    width: int | None
    height: int | None
    video_start: float | None
    audio_seconds: float | None
    audio_start: float | None
    monotonic: bool  # every stream's decode timestamps strictly increase
    video_gaps: int  # steps between consecutive frames longer than 1.5 frames (a join that left a hole)

    @property
    def video_seconds(self) -> float:
        return self.video_frames / FPS

    @property
    def resolution(self) -> str | None:
        return f"{self.width}x{self.height}" if self.width else None


def inspect_clip(path: Path) -> ClipFacts:
    import av

    with av.open(str(path)) as container:
        last: dict[int, int] = {}
        monotonic = True
        for packet in container.demux():
            if packet.dts is None:
                continue
            index = packet.stream.index
            if index in last and packet.dts <= last[index]:
                monotonic = False
            last[index] = packet.dts
    video_frames, width, height, video_start = 0, None, None, None
    times: list[float] = []
    with av.open(str(path)) as container:
        if container.streams.video:
            for frame in container.decode(video=0):
                video_frames += 1
                video_start = frame.time if video_start is None else video_start
                width, height = frame.width, frame.height
                if frame.time is not None:
                    times.append(frame.time)
    times.sort()
    gaps = sum(1 for a, b in pairwise(times) if b - a > 1.5 / FPS)
    samples, rate, audio_start = 0, 0, None
    with av.open(str(path)) as container:
        if container.streams.audio:
            for frame in container.decode(audio=0):
                samples += frame.samples
                rate = frame.sample_rate
                audio_start = frame.time if audio_start is None else audio_start
    return ClipFacts(
        video_frames=video_frames,
        width=width,
        height=height,
        video_start=video_start,
        audio_seconds=samples / rate if rate else None,
        audio_start=audio_start,
        monotonic=monotonic,
        video_gaps=gaps,
    )
