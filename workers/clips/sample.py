"""Generated media for `fleet demo`, the tests and the benchmark: ffmpeg's test pattern and a tone,
H.264/AAC in MP4, with a fixed keyframe interval so keyframe-aligned cuts are predictable."""

from __future__ import annotations

from pathlib import Path

from workers.clips import process


async def generate_source(
    ffmpeg: str,
    path: Path,
    *,
    seconds: float,
    size: str = "640x360",
    fps: int = 25,
    keyframe_seconds: int = 2,
    audio: bool = True,
    video: bool = True,
    preset: str = "ultrafast",
    bitrate: str | None = None,
) -> Path:
    """Write a `seconds`-long MP4 (moov first) to `path`; `bitrate` (e.g. "8M") pads it to a constant rate."""
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:beep_factor=4"]
    args += ["-t", f"{seconds:g}"]
    if video:
        gop = str(fps * keyframe_seconds)
        args += ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
        args += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0"]
        if bitrate:
            args += ["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
            args += ["-x264-params", "nal-hrd=cbr:force-cfr=1"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "96k", "-ac", "2"]
    args += ["-movflags", "+faststart", str(path)]
    await process.run(args, time_limit=600)
    return path
