"""`clips`: seed 002's trigger, Step Functions execution, segment extractor and stitcher as one stage.

- A **Begin Clip Generation** event is fanned out: one clip job per clip (from `detail.clips`, else the
  episode's clip items), sent back onto `fleet-clips`, so the clips of one episode render in parallel on
  every task that consumes the queue.
- A **clip job** is rendered: In Progress (the claim), segments checked, the source probed and cut over
  HTTP range reads, the clip streamed to `fleet-media/<episodeId>/clips/<clipId>/clip.mp4`, probed,
  Complete. A failure that retrying cannot fix (bad segments, missing or unreadable source) marks the
  clip Generation Failed and dead-letters the job with its code; others are retried with backoff and
  mark the clip failed only on the last attempt.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from shared.errors import Fatal, FleetError, Retry, Transient, classify
from shared.settings import load_stage_settings
from shared.stage import JOB_ID_ATTRIBUTE, Context, Services
from workers.clips.binaries import find_tools
from workers.clips.config import ClipsSettings
from workers.clips.errors import SourceNotFound
from workers.clips.models import (
    BeginClipGeneration,
    ClipJob,
    ClipRequest,
    ClipsMessage,
    parse_message,
    plan_spans,
)
from workers.clips.render import ClipResult, Renderer
from workers.clips.resources import CLIPS, CLIPS_TABLE, MEDIA
from workers.clips.store import Attempt, Begin, Busy, ClipStore

log = logging.getLogger("fleet.clips")

SQS_BATCH = 10


def output_key(episode_id: str, clip_id: str) -> str:
    return f"{episode_id}/clips/{clip_id}/clip.mp4"


class ClipsStage:
    name = "clips"

    def __init__(self, services: Services, *, config: ClipsSettings | None = None) -> None:
        settings = services.settings
        self.services = services
        self.config = config or load_stage_settings(ClipsSettings)
        self.tools = find_tools(self.config.ffmpeg, self.config.ffprobe)
        self.store = ClipStore(services.aws.dynamodb, settings.name_of(CLIPS_TABLE))
        self.renderer = Renderer(services.aws.s3, settings.name_of(MEDIA), self.tools, self.config)
        self._queue_url: str | None = None

    def parse(self, body: str) -> ClipsMessage:
        return parse_message(body)

    async def handle(self, message: ClipsMessage, ctx: Context) -> None:
        if isinstance(message, BeginClipGeneration):
            await self.fan_out(message, ctx)
        else:
            await self.render(message, ctx)

    # --- the trigger ---------------------------------------------------------------------------------

    async def fan_out(self, event: BeginClipGeneration, ctx: Context) -> list[str]:
        detail = event.detail
        # A redelivered event keeps its id, so its clip jobs carry the same request id: a clip already
        # rendered for it is not rendered again.
        request_id = event.id or ctx.message.id
        if detail.clips is not None:
            clips = detail.clips
        else:
            clips = [c async for c in self._stored_clips(detail.tenantId, detail.episodeId)]
        if len(clips) > self.config.max_clips:
            raise Fatal(
                f"the event lists {len(clips)} clips; at most {self.config.max_clips} per event",
                code="TOO_MANY_CLIPS",
            )
        episode = await self.store.episode(detail.tenantId, detail.episodeId)
        video_key = episode.get("videoKey") if episode else None
        jobs = [
            ClipJob(
                kind="clip",
                tenantId=detail.tenantId,
                episodeId=detail.episodeId,
                clipId=clip.clipId,
                requestId=request_id,
                videoKey=video_key if isinstance(video_key, str) and video_key else None,
                segments=clip.segments,
            )
            for clip in clips
        ]
        await self._send(jobs, ctx.job_id)
        log.info(
            "clip generation fanned out",
            extra={"tenant": detail.tenantId, "episode": detail.episodeId, "clips": len(jobs)},
        )
        if ctx.job_id:
            await self.services.jobs.record_stage(
                ctx.job_id, "clips", "FANNED_OUT", clips=[j.clipId for j in jobs], episode=detail.episodeId
            )
        return [j.clipId for j in jobs]

    async def _stored_clips(self, tenant_id: str, episode_id: str) -> Any:
        async for item in self.store.clips(tenant_id, episode_id):
            raw = {"clipId": str(item["sk"]).removeprefix("clip#"), "segments": item.get("segments") or []}
            try:
                yield ClipRequest.model_validate(raw)
            except ValueError as exc:
                log.warning("clip item skipped: unusable id or segments", extra={"sk": item["sk"], "error": str(exc)})

    async def _send(self, jobs: list[ClipJob], job_id: str | None) -> None:
        sqs = self.services.aws.sqs
        if self._queue_url is None:
            name = self.services.settings.name_of(CLIPS)
            self._queue_url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        attributes = {JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": job_id}} if job_id else {}
        for start in range(0, len(jobs), SQS_BATCH):
            batch = jobs[start : start + SQS_BATCH]
            entries: Any = [
                {"Id": str(i), "MessageBody": j.model_dump_json(exclude_none=True), "MessageAttributes": attributes}
                for i, j in enumerate(batch)
            ]
            resp = await sqs.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            if resp.get("Failed"):
                # The whole event is retried; clips already sent are recognised by their request id.
                raise Transient(f"could not queue clip jobs: {json.dumps(resp['Failed'])[:500]}", code="SQS_SEND")

    # --- one clip ----------------------------------------------------------------------------------

    async def render(self, job: ClipJob, ctx: Context) -> None:
        # The runtime's attempt count (handler failures + crashes; a release at shutdown re-sends the message
        # as a copy that continues the same attempt) and the first copy's id identify this render.
        attempt = Attempt(job.tenantId, job.episodeId, job.clipId, job.requestId, ctx.message.origin_id, ctx.attempt)
        lease = float(ctx.tuning.visibility_timeout)
        try:
            begun = await self.store.begin(attempt, lease_seconds=lease)
        except Busy as busy:
            raise Retry("another message is rendering this clip", delay=busy.seconds, code="CLIP_BUSY") from None
        if begun is Begin.DONE:
            log.info("clip already generated for this request", extra={"clip": job.clipId})
            return
        try:
            result = await self._render(job, attempt, lease)
        except Exception as exc:
            error = classify(exc)
            last = not isinstance(error, Retry) or ctx.attempt >= ctx.tuning.max_attempts
            if last:
                await self.store.fail(attempt, error.code, error.reason)
            if isinstance(exc, FleetError):
                raise
            raise error from exc
        if not await self.store.complete(attempt, result.item_fields()):
            log.warning("clip rendered, but another attempt holds it now", extra={"clip": job.clipId})
            return
        if ctx.job_id:
            await self.services.jobs.record_stage(
                ctx.job_id, "clips", "CLIP_COMPLETE", clip=job.clipId, s3_key=result.s3_key, mode=result.render_mode
            )

    async def _render(self, job: ClipJob, attempt: Attempt, lease: float) -> ClipResult:
        spans = plan_spans(
            job.segments, max_segments=self.config.max_segments, max_clip_seconds=self.config.max_clip_seconds
        )
        if not job.videoKey:
            raise SourceNotFound(f"episode {job.episodeId} has no videoKey in its episode item")
        last_write = time.monotonic()

        async def progress(fraction: float) -> None:
            # Each write renews the claim: a render that stops progressing stops renewing it.
            nonlocal last_write
            now = time.monotonic()
            if now - last_write < self.config.progress_interval and fraction < 1.0:
                return
            last_write = now
            if not await self.store.renew(attempt, lease_seconds=lease, progress=int(fraction * 100)):
                raise Retry("another attempt took this clip over", code="CLIP_SUPERSEDED")

        key = output_key(job.episodeId, job.clipId)
        return await self.renderer.render(job.videoKey, spans, key, progress, owner=job.tenantId)
