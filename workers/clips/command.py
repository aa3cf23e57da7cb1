"""ffmpeg command lines, built with ffmpeg-python (the product owner's choice) and only compiled by it:
`process.run` runs them.

Every input is the source's presigned URL, opened with:
- `-protocol_whitelist http,https,tcp,tls` and `-format_whitelist mov`: a hostile source (an HLS playlist or
  a concat script named `.mp4`) cannot make ffmpeg open local files or other hosts; only MP4/MOV is parsed;
- `-ss`/`-t` before `-i` (input seeking): ffmpeg reads the index, then range-requests the bytes from the
  keyframe before each cut on, never the whole source; with ffmpeg ≥ 7.1 `-request_size` bounds each range.

The re-encode (default) trims each segment frame- and sample-exactly and joins them with the concat filter
in one pass. The fast mode stream-copies when every cut lies on a keyframe: one ffmpeg run copies the
segments into local MPEG-TS files, a second joins them (concat demuxer, our own files only) — no decoding.
Both write fragmented MP4 to stdout (the uploader streams it to S3); `delay_moov` lets the muxer write the
edit lists, so audio and video both start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

ALLOWED_PROTOCOLS = "http,https,tcp,tls"
ALLOWED_FORMATS = "mov"  # the MP4/MOV demuxer (mov,mp4,m4a,3gp,3g2,mj2) and nothing else
FRAGMENTED_MP4 = "frag_keyframe+empty_moov+delay_moov+default_base_moof"
PROGRESS = "{progress}"  # replaced with the progress pipe by process.run
# Read a little past each cut so the trim filters, not the demuxer, decide the last frame and sample.
READ_PAST_SECONDS = 0.5
RW_TIMEOUT_MICROS = 30_000_000  # a stalled HTTP read fails after 30 s instead of hanging


@dataclass(frozen=True)
class Cut:
    start: float  # seconds from the start of the source
    duration: float
    frames: int | None = None  # video frames to keep (see `frame_counts`); None: trim by duration
    fps: float | None = None

    @property
    def kept(self) -> float:
        """Seconds kept from this segment: whole frames when counted, so its audio ends with its video."""
        return self.frames / self.fps if self.frames and self.fps else self.duration


@dataclass(frozen=True)
class Encoding:
    preset: str = "veryfast"
    crf: int = 20
    audio_bitrate: str = "128k"


def frame_counts(durations: Sequence[float], fps: float) -> list[int]:
    """Video frames per segment so the clip's frame count is its summed duration rounded once (not once per
    segment): segment i ends at frame round(fps · (d₀ + … + dᵢ)), so every join is within half a frame of
    where the segment times put it, and the clip is exactly round(fps · Σd) frames long."""
    counts, cumulative, emitted = [], 0.0, 0
    for duration in durations:
        cumulative += duration
        boundary = round(cumulative * fps)
        counts.append(max(1, boundary - emitted))
        emitted += counts[-1]
    return counts


def input_options(request_size: int = 0) -> dict[str, str]:
    """Options for opening the (untrusted) source, shared with the probe."""
    options = {
        "protocol_whitelist": ALLOWED_PROTOCOLS,
        "format_whitelist": ALLOWED_FORMATS,
        "rw_timeout": str(RW_TIMEOUT_MICROS),
    }
    if request_size > 0:
        options |= {"request_size": str(request_size), "initial_request_size": str(request_size)}
    return options


def _global(exe: str) -> list[str]:
    return [exe, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-progress", PROGRESS]


def _compiled(exe: str, node: ffmpeg.nodes.OutputStream) -> list[str]:
    args: list[str] = node.compile(cmd=exe)
    return [*_global(exe), *args[1:]]


def reencode(
    exe: str,
    url: str,
    cuts: Sequence[Cut],
    *,
    video: bool,
    audio: bool,
    encoding: Encoding,
    options: dict[str, str],
) -> list[str]:
    """One pass: seek each segment on input, trim it exactly, concat filter, x264/AAC, fragmented MP4."""
    if not (video or audio):
        raise ValueError("a clip needs a video or an audio stream")
    parts = []
    for cut in cuts:
        source = ffmpeg.input(url, ss=f"{cut.start:.3f}", t=f"{cut.duration + READ_PAST_SECONDS:.3f}", **options)
        if video:
            trim = {"end_frame": cut.frames} if cut.frames else {"duration": f"{cut.duration:.3f}"}
            # Rebase first, then trim: the segment then ends (for the concat filter) exactly at its last frame.
            parts.append(source.video.setpts("PTS-STARTPTS").trim(**trim))
        if audio:
            # The concat filter starts each segment where the longest stream of the previous one ended, so
            # audio is cut to the video's whole frames: no gap at a join, and sync holds across it.
            audio_part = source.audio.filter("asetpts", "PTS-STARTPTS")
            parts.append(audio_part.filter("atrim", duration=f"{cut.kept:.6f}"))
    joined = ffmpeg.concat(*parts, v=int(video), a=int(audio)).node
    streams = [joined[i] for i in range(int(video) + int(audio))]
    settings: dict[str, str | int] = {"f": "mp4", "movflags": FRAGMENTED_MP4}
    if video:
        settings |= {"vcodec": "libx264", "preset": encoding.preset, "crf": encoding.crf, "pix_fmt": "yuv420p"}
    if audio:
        settings |= {"acodec": "aac", "audio_bitrate": encoding.audio_bitrate}
    return _compiled(exe, ffmpeg.output(*streams, "pipe:1", **settings))


def copy_segments(
    exe: str, url: str, cuts: Sequence[Cut], workdir: Path, *, video: bool, audio: bool, options: dict[str, str]
) -> tuple[list[str], list[Path]]:
    """Fast mode, step 1: copy each (keyframe-aligned) segment into its own MPEG-TS file, in one run."""
    outputs, files = [], []
    for i, cut in enumerate(cuts):
        source = ffmpeg.input(url, ss=f"{cut.start:.3f}", t=f"{cut.duration:.3f}", **options)
        streams = [*([source.video] if video else []), *([source.audio] if audio else [])]
        path = workdir / f"segment-{i:03d}.ts"
        files.append(path)
        outputs.append(ffmpeg.output(*streams, str(path), c="copy", f="mpegts", avoid_negative_ts="make_zero"))
    return _compiled(exe, ffmpeg.merge_outputs(*outputs)), files


def concat_copies(exe: str, files: Sequence[Path], workdir: Path, *, audio: bool) -> list[str]:
    """Fast mode, step 2: join the copied segments without decoding (they are our own local files).
    MPEG-TS carries AAC as ADTS; MP4 wants it raw, hence `aac_adtstoasc` (fast mode requires AAC)."""
    listing = workdir / "segments.ffconcat"
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{f.name}'\n" for f in files))
    joined = ffmpeg.input(str(listing), f="concat", safe=1, protocol_whitelist="file", format_whitelist="concat,mpegts")
    settings = {"c": "copy", "f": "mp4", "movflags": FRAGMENTED_MP4, **({"bsf:a": "aac_adtstoasc"} if audio else {})}
    return _compiled(exe, ffmpeg.output(joined, "pipe:1", **settings))
