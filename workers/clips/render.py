"""One clip: probe the source over HTTP, pick re-encode or stream copy, run ffmpeg, stream its output to S3,
probe the result. Knows nothing of queues or DynamoDB: progress goes to a callback."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import S3_NO_SUCH_KEY, error_code
from workers.clips import command, process
from workers.clips.binaries import Tools
from workers.clips.config import ClipsSettings
from workers.clips.errors import FfmpegFailed, FfmpegTransient, OutputConflict, SourceNotFound
from workers.clips.models import Span, check_within
from workers.clips.probe import MediaInfo, ProbeError, Prober
from workers.clips.timecode import hhmmss
from workers.clips.upload import StreamingUpload

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import HeadObjectOutputTypeDef

OWNER_METADATA = "tenant-id"  # the tenant a stored clip was rendered for (S3 user metadata)

log = logging.getLogger("fleet.clips")

# Codecs the fast mode copies into MPEG-TS and back into MP4 without a re-encode.
COPYABLE_VIDEO = frozenset({"h264", "hevc"})
COPYABLE_AUDIO = frozenset({"aac"})
# ffmpeg stderr that means the network or S3 failed, not the media: worth another attempt.
TRANSIENT_MARKERS = ("Server returned 5", "Connection refused", "Connection reset", "timed out", "Input/output error")


def _transient(message: str) -> bool:
    return any(marker in message for marker in TRANSIENT_MARKERS)


OnProgress = Callable[[float], Awaitable[None]]  # fraction done, 0..1


@dataclass(frozen=True)
class ClipResult:
    s3_key: str
    file_size: int
    duration: float
    resolution: str | None
    render_mode: str  # "reencode" | "copy"
    keyframe_aligned: bool
    parts: int

    def item_fields(self) -> dict[str, Any]:
        """What the clip item gets on Generation Complete (seed 002 names, plus how it was made)."""
        from workers.clips.store import number

        fields: dict[str, Any] = {
            "s3Key": self.s3_key,
            "fileSize": self.file_size,
            "duration": hhmmss(self.duration),
            "durationSeconds": number(self.duration),
            "renderMode": self.render_mode,
            "keyframeAligned": self.keyframe_aligned,
        }
        if self.resolution:
            fields["resolution"] = self.resolution
        return fields


class Renderer:
    def __init__(self, s3: S3Client, bucket: str, tools: Tools, config: ClipsSettings) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.tools = tools
        self.config = config
        request_size = config.request_size if tools.http_request_size else 0
        self.options = command.input_options(request_size)
        self.prober = Prober(tools.ffprobe, timeout=config.probe_timeout, request_size=request_size)
        self.encoding = command.Encoding(config.preset, config.crf, config.audio_bitrate)

    async def render(
        self, video_key: str, spans: list[Span], output_key: str, on_progress: OnProgress, *, owner: str
    ) -> ClipResult:
        await self._require_source(video_key)
        await self._require_ours(output_key, owner)
        url = await self._presign(video_key)
        cut_times = sorted({t / 1000 for s in spans for t in (s.start_ms, s.end_ms)})
        try:
            info = await self.prober.probe(url, cut_times if self.config.fast_mode == "auto" else ())
        except ProbeError as exc:
            if exc.not_found:
                raise SourceNotFound(f"s3://{self.bucket}/{video_key} is gone: {exc}") from None
            if _transient(str(exc)):
                raise FfmpegTransient(f"could not read the source: {exc}") from None
            raise FfmpegFailed(f"source is not a readable MP4/MOV file: {exc}") from None
        check_within(spans, info.duration)
        if info.video is None and info.audio is None:
            raise FfmpegFailed("source has neither a video nor an audio stream")
        aligned = keyframe_aligned(info, spans)
        mode = "copy" if aligned and self.config.fast_mode == "auto" and copyable(info) else "reencode"
        cuts = [command.Cut(s.start_ms / 1000, s.duration_ms / 1000) for s in spans]
        if info.video is not None and info.video.fps and mode == "reencode":
            frames = command.frame_counts([c.duration for c in cuts], info.video.fps)
            fps = info.video.fps
            cuts = [command.Cut(c.start, c.duration, n, fps) for c, n in zip(cuts, frames, strict=True)]
        total = sum(c.duration for c in cuts)
        upload = StreamingUpload(
            self.s3,
            self.bucket,
            output_key,
            part_size=self.config.part_size,
            metadata={
                "render-mode": mode,
                "keyframe-aligned": str(aligned).lower(),
                "segments": str(len(spans)),
                OWNER_METADATA: owner,
            },
        )
        started = time.monotonic()
        try:
            if mode == "copy":
                written = await self._copy(url, cuts, info, upload, total, on_progress)
            else:
                args = command.reencode(
                    self.tools.ffmpeg,
                    url,
                    cuts,
                    video=info.video is not None,
                    audio=info.audio is not None,
                    encoding=self.encoding,
                    options=self.options,
                )
                written = await self._ffmpeg(args, upload.write, _scaled(on_progress, total, 0.0, 1.0))
            size = await upload.complete()
        except BaseException:
            with contextlib.suppress(Exception):
                await upload.abort()
            raise
        log.info(
            "clip rendered",
            extra={
                "key": output_key,
                "mode": mode,
                "bytes": size,
                "parts": upload.parts,
                "seconds": round(time.monotonic() - started, 2),
            },
        )
        # The stored clip is probed (readable? which streams? what size of picture?); its length is what
        # ffmpeg wrote, to the frame — a fragmented MP4's headers can be a frame off, and measuring it from
        # its packets would mean reading the whole clip back.
        clip = await self._probe_output(output_key)
        stored = clip.media_duration
        if written is not None and stored is not None and abs(stored - written) > 1.0:
            raise FfmpegFailed(f"the stored clip lasts {stored:.3f}s, but ffmpeg wrote {written:.3f}s")
        return ClipResult(
            s3_key=output_key,
            file_size=size,
            duration=written or stored or total,
            resolution=clip.video.resolution if clip.video else None,
            render_mode=mode,
            keyframe_aligned=aligned,
            parts=upload.parts,
        )

    async def _copy(
        self,
        url: str,
        cuts: list[command.Cut],
        info: MediaInfo,
        upload: StreamingUpload,
        total: float,
        on_progress: OnProgress,
    ) -> float | None:
        video, audio = info.video is not None, info.audio is not None
        with tempfile.TemporaryDirectory(prefix="fleet-clip-") as tmp:
            workdir = Path(tmp)
            args, files = command.copy_segments(
                self.tools.ffmpeg, url, cuts, workdir, video=video, audio=audio, options=self.options
            )
            await self._ffmpeg(args, None, _scaled(on_progress, total, 0.0, 0.5))
            joined = command.concat_copies(self.tools.ffmpeg, files, workdir, audio=audio)
            return await self._ffmpeg(joined, upload.write, _scaled(on_progress, total, 0.5, 1.0))

    async def _ffmpeg(
        self, args: list[str], sink: process.Sink | None, on_progress: process.OnProgress
    ) -> float | None:
        """Run ffmpeg; return the length of what it wrote (its last `-progress` block), when it said."""
        last: list[process.Progress] = []

        async def progress(p: process.Progress) -> None:
            last[:] = [p]
            await on_progress(p)

        try:
            await process.run(
                args,
                time_limit=self.config.ffmpeg_timeout,
                stall_timeout=self.config.stall_timeout,
                stdout=sink or _discard,
                on_progress=progress,
            )
        except process.FfmpegTimeout as exc:
            raise FfmpegTransient(f"ffmpeg {exc.reason}: {exc.stderr_tail}") from None
        except process.FfmpegError as exc:
            tail = exc.stderr_tail
            if "404 Not Found" in tail:
                raise SourceNotFound(f"the source disappeared during the render: {tail}") from None
            if _transient(tail):
                raise FfmpegTransient(f"ffmpeg {exc.reason}: {tail}") from None
            raise FfmpegFailed(f"ffmpeg {exc.reason}: {tail or 'no message'}") from None
        return last[0].out_seconds if last and last[0].done and last[0].out_seconds > 0 else None

    async def _head(self, key: str) -> HeadObjectOutputTypeDef | None:
        """The object's HeadObject answer, or None when there is no such object."""
        try:
            return await self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in S3_NO_SUCH_KEY:
                return None
            raise

    async def _require_source(self, key: str) -> None:
        if await self._head(key) is None:
            raise SourceNotFound(f"s3://{self.bucket}/{key} does not exist")

    async def _require_ours(self, key: str, owner: str) -> None:
        """The output key names no tenant (`<episodeId>/clips/<clipId>/clip.mp4`, as the contract fixes it), so
        two tenants with the same episode and clip ids would share it: a clip stored for another tenant is never
        overwritten. (A clip stored before owners were recorded carries none and may be replaced. Two tenants
        rendering the same key at the same moment both pass this check: the later upload wins.)"""
        head = await self._head(key)
        if head is None:
            return
        stored = head.get("Metadata", {}).get(OWNER_METADATA)
        if stored is not None and stored != owner:
            raise OutputConflict(f"s3://{self.bucket}/{key} holds another tenant's clip; it is not overwritten")

    async def _presign(self, key: str) -> str:
        return await self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.config.presign_expires
        )

    async def _probe_output(self, key: str) -> MediaInfo:
        try:
            return await self.prober.probe(await self._presign(key))
        except ProbeError as exc:
            error = FfmpegTransient if _transient(str(exc)) else FfmpegFailed
            raise error(f"the rendered clip cannot be read back: {exc}") from None


def keyframe_aligned(info: MediaInfo, spans: list[Span]) -> bool:
    """True when every cut (start and end) falls on a video keyframe, to the millisecond; an end at the
    source's end counts as aligned. Without a video stream there is nothing to align."""
    if info.video is None:
        return False
    source_ms = round((info.duration or 0) * 1000)
    for span in spans:
        for at_ms in (span.start_ms, span.end_ms):
            if at_ms == span.end_ms and at_ms >= source_ms:
                continue
            keyframe = info.keyframes.get(at_ms / 1000)
            if keyframe is None or abs(round(keyframe * 1000) - at_ms) > 1:
                return False
    return True


def copyable(info: MediaInfo) -> bool:
    video_ok = info.video is None or info.video.codec in COPYABLE_VIDEO
    audio_ok = info.audio is None or info.audio.codec in COPYABLE_AUDIO
    return video_ok and audio_ok


def _scaled(on_progress: OnProgress, total: float, low: float, high: float) -> process.OnProgress:
    async def report(p: process.Progress) -> None:
        done = 1.0 if p.done else min(1.0, p.out_seconds / total) if total > 0 else 0.0
        await on_progress(low + (high - low) * done)

    return report


async def _discard(chunk: bytes) -> None:
    return None
