"""clips: a Begin Clip Generation event naming no clips is fanned out from the episode's clip items, and
each clip is cut by ffmpeg from the source's presigned URL (read with the worker's identity) and stored."""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
import threading
from pathlib import Path

from shared.jobs import to_item
from tests.clips_helpers import TENANT, clip_config, clip_item, seed_episode, segments, statuses
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from workers.clips.binaries import find_tools
from workers.clips.resources import CLIPS_TABLE, MEDIA
from workers.clips.sample import generate_source
from workers.clips.stage import ClipsStage, output_key
from workers.clips.store import COMPLETE, IN_PROGRESS
from workers.clips.submit import submit

_generating = threading.Lock()


@functools.cache
def _make_source() -> bytes:
    with tempfile.TemporaryDirectory(prefix="fleet-iam-clips-") as tmp:
        made = generate_source(find_tools().ffmpeg, Path(tmp) / "source.mp4", seconds=4, size="160x120")
        return asyncio.run(made).read_bytes()


def source() -> bytes:
    """A 4 s source, made once per session. Called in a thread (it runs its own event loop); the removal
    runs start together: one of them makes it, the others wait for it."""
    with _generating:
        return _make_source()


async def given_a_clip_generation_job(run: Run, episode: str) -> str:
    """The episode's source in the media bucket, its episode item and one clip item ("c1"), and its Begin
    Clip Generation job submitted as `fleet submit clips --tenant acme --episode E` does (no clips listed:
    the worker reads the clip items). Returns the job id."""
    await seed_episode(run.admin, episode, await asyncio.to_thread(source))
    clip = {"pk": f"{TENANT}#{episode}", "sk": "clip#c1", "segments": segments(("00:00:01.200", "00:00:02.500"))}
    await run.admin.aws.dynamodb.put_item(TableName=run.settings.name_of(CLIPS_TABLE), Item=to_item(clip))
    return await submit(argparse.Namespace(tenant=TENANT, episode=episode, clips=None, via_bus=False), run.admin)


# A clip over its part size (8 MiB) goes up in parts: only a render failing after that aborts the upload.
ABORT = "only when a render fails once its clip (over the part size) is a multipart upload"


@scenario("clips", unused={"s3:AbortMultipartUpload": ABORT})
async def clips(run: Run) -> None:
    # Given an episode with one clip item, and its Begin Clip Generation job
    episode = f"ep-{run.ident}"
    job_id = await given_a_clip_generation_job(run, episode)
    # When clips drains its queue (the event fans out onto it; the clip job follows)
    result = await run.burst(ClipsStage(run.worker, config=clip_config()))
    # Then the clip was rendered once and stored, and the job shows the fan-out and the clip
    assert result.stats.succeeded == 2 and result.dead_letters == []
    item = await clip_item(run.admin, episode, "c1")
    assert statuses(item) == [IN_PROGRESS, COMPLETE]
    head = await run.admin.aws.s3.head_object(Bucket=run.settings.name_of(MEDIA), Key=output_key(episode, "c1"))
    assert head["ContentLength"] == item["fileSize"] > 0
    job = await run.admin.jobs.get(job_id)
    assert job is not None
    statuses_of_job = [h["status"] for h in job["history"] if h["stage"] == "clips"]
    assert "FANNED_OUT" in statuses_of_job and "CLIP_COMPLETE" in statuses_of_job
