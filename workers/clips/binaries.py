"""Which ffmpeg and ffprobe to run, and what that ffmpeg supports.

In the Docker image they are Debian's (`ffmpeg` on PATH, with ffprobe); locally, without a system
ffmpeg, the imageio-ffmpeg wheel's static build (which ships no ffprobe: PyAV probes instead)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tools:
    ffmpeg: str
    ffprobe: str | None  # None: probe with PyAV
    http_request_size: bool  # ffmpeg ≥ 7.1 can bound its HTTP range requests (`-request_size`)


@functools.cache
def find_tools(ffmpeg: str | None = None, ffprobe: str | None = None) -> Tools:
    exe = ffmpeg or shutil.which("ffmpeg") or _bundled()
    probe = ffprobe or _beside(exe, "ffprobe") or shutil.which("ffprobe")
    return Tools(ffmpeg=exe, ffprobe=probe, http_request_size=_supports(exe, "protocol=http", "-request_size"))


def _bundled() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _beside(exe: str, name: str) -> str | None:
    candidate = Path(exe).with_name(name)
    return str(candidate) if candidate.is_file() and candidate.name != Path(exe).name else None


def _supports(exe: str, topic: str, option: str) -> bool:
    try:
        out = subprocess.run(
            [exe, "-hide_banner", "-h", topic],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return f"{option} " in out
