"""The clips worker end to end: real ffmpeg on generated media, the real emulator, the real runtime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from shared.cli import build_parser
from shared.stage import Services
from tests.clips_helpers import (
    TENANT,
    attribute,
    begin_event,
    clip_config,
    clip_item,
    dead_letters,
    download,
    put_on_queue,
    run_clips,
    seed_episode,
    segments,
    statuses,
)
from tests.helpers import queue_urls
from tests.media import FPS, Media, inspect_clip, media_fixture  # noqa: F401  (the session fixture)
from workers.clips.demo import demo
from workers.clips.resources import CLIPS, MEDIA
from workers.clips.store import COMPLETE, FAILED, IN_PROGRESS

FRAME = 1 / FPS


async def test_a_begin_clip_generation_event_on_the_default_bus_reaches_the_clips_queue(fleet: Services) -> None:
    # Given a bootstrapped fleet (its rule on the default bus)
    # When a "Begin Clip Generation" event is put on the default bus
    resp = await fleet.aws.events.put_events(
        Entries=[
            {"Source": "studio", "DetailType": "Begin Clip Generation", "Detail": json.dumps({"tenantId": "t"})},
            {"Source": "studio", "DetailType": "Something Else", "Detail": json.dumps({"tenantId": "t"})},
        ]
    )
    assert resp["FailedEntryCount"] == 0
    # Then it, and only it, arrives on fleet-clips in the EventBridge envelope
    url, _ = await queue_urls(fleet, CLIPS)
    received = []
    for _ in range(3):
        batch = await fleet.aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        received += [json.loads(m["Body"]) for m in batch.get("Messages", [])]
    assert [m["detail-type"] for m in received] == ["Begin Clip Generation"]
    assert received[0]["detail"] == {"tenantId": "t"}

    # And `fleet submit clips --via-bus` takes the same road, printing the event id
    args = build_parser().parse_args(["submit", "clips", "--tenant", "acme", "--episode", "e1", "--via-bus"])
    event_id = await args.submit(args, fleet)
    batch = await fleet.aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    (routed,) = [json.loads(m["Body"]) for m in batch.get("Messages", [])]
    assert routed["id"] == event_id and routed["detail"] == {"tenantId": "acme", "episodeId": "e1"}


async def test_a_three_segment_clip_is_frame_exact_with_audio_in_sync(
    fleet: Services,
    media: Media,
    tmp_path: Path,
) -> None:
    # Given a 12 s 320x240 source with audio, and a clip of three segments that do not start on keyframes
    episode = "ep-exact"
    await seed_episode(fleet, episode, media.with_audio)
    spans = segments(("00:00:00.520", "00:00:02.000"), ("00:00:05.250", "00:00:06.750"), ("00:00:09.100", "00:00:11"))
    expected = (2.0 - 0.52) + (6.75 - 5.25) + (11 - 9.1)  # 4.88 s = 122 frames
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "c1", "segments": spans}]))

    # When the worker runs until its queue is empty
    worker = await run_clips(fleet)

    # Then the event and its one clip job succeeded
    assert (worker.stats.received, worker.stats.succeeded) == (2, 2)
    item = await clip_item(fleet, episode, "c1")
    assert statuses(item) == [IN_PROGRESS, COMPLETE]
    assert item["s3Key"] == f"{episode}/clips/c1/clip.mp4"
    assert item["resolution"] == "320x240" and item["renderMode"] == "reencode"
    assert item["duration"] == "00:00:05"
    assert abs(float(item["durationSeconds"]) - expected) <= FRAME / 2

    # And the clip itself has the summed duration to the frame, the source's resolution, clean timestamps
    clip = inspect_clip(await download(fleet, item["s3Key"], tmp_path / "clip.mp4"))
    assert clip.video_frames == round(expected * FPS), clip
    assert clip.resolution == "320x240"
    assert clip.monotonic and clip.video_gaps == 0, clip
    # And audio for its whole length, starting with the video
    assert clip.audio_seconds is not None and abs(clip.audio_seconds - expected) <= FRAME, clip
    assert clip.video_start is not None and clip.audio_start is not None
    assert abs(clip.video_start - clip.audio_start) <= FRAME / 2
    # And the item's size is the object's
    head = await fleet.aws.s3.head_object(Bucket=fleet.settings.name_of(MEDIA), Key=item["s3Key"])
    assert head["ContentLength"] == int(item["fileSize"])
    assert head["Metadata"]["render-mode"] == "reencode"


async def test_keyframe_aligned_cuts_are_stream_copied_and_the_metadata_says_so(
    fleet: Services,
    media: Media,
    tmp_path: Path,
) -> None:
    # Given cuts that all fall on the source's 1 s keyframes
    episode = "ep-copy"
    await seed_episode(fleet, episode, media.with_audio)
    spans = segments(("00:00:01", "00:00:03"), ("00:00:06", "00:00:07"), ("00:00:09", "00:00:11"))
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "fast", "segments": spans}]))

    # When the worker runs with its fast mode on
    await run_clips(fleet, clip_config(fast_mode="auto"))

    # Then the clip was stream-copied, and both the item and the object say so
    item = await clip_item(fleet, episode, "fast")
    assert statuses(item) == [IN_PROGRESS, COMPLETE]
    assert (item["renderMode"], item["keyframeAligned"]) == ("copy", True)
    head = await fleet.aws.s3.head_object(Bucket=fleet.settings.name_of(MEDIA), Key=item["s3Key"])
    assert head["Metadata"]["render-mode"] == "copy" and head["Metadata"]["keyframe-aligned"] == "true"
    # And its video is frame-exact (5 s), with monotonic timestamps; copied audio comes in whole AAC frames
    # (1024 samples), so each segment's may run up to a frame and a bit past its cut, never short
    clip = inspect_clip(await download(fleet, item["s3Key"], tmp_path / "clip.mp4"))
    assert abs(clip.video_seconds - 5.0) <= FRAME and clip.monotonic, clip
    aac_frame = 1024 / 48000
    assert clip.audio_seconds is not None and 5.0 - FRAME <= clip.audio_seconds <= 5.0 + 3 * 1.25 * aac_frame, clip
    assert clip.video_start is not None and clip.audio_start is not None
    assert abs(clip.video_start - clip.audio_start) <= aac_frame, clip


async def test_by_default_aligned_cuts_are_re_encoded_too(fleet: Services, media: Media) -> None:
    # Given keyframe-aligned cuts, and a worker with its default settings (fast mode off)
    episode = "ep-nofast"
    await seed_episode(fleet, episode, media.with_audio)
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "c", "segments": segments(("00:00:01", "00:00:02"))}]))
    # When it runs, Then the clip is re-encoded
    await run_clips(fleet)
    assert (await clip_item(fleet, episode, "c"))["renderMode"] == "reencode"


async def test_a_clip_stored_for_another_tenant_is_never_overwritten(fleet: Services, media: Media) -> None:
    # Given tenant acme's clip "c" of episode "ep-shared", generated (the output key names no tenant)
    episode, media_bucket = "ep-shared", fleet.settings.name_of(MEDIA)
    await seed_episode(fleet, episode, media.with_audio)
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "c", "segments": segments(("00:00:01", "00:00:02"))}]))
    await run_clips(fleet)
    ours = await clip_item(fleet, episode, "c")
    stored = await fleet.aws.s3.head_object(Bucket=media_bucket, Key=ours["s3Key"])
    assert stored["Metadata"]["tenant-id"] == TENANT

    # When another tenant asks for a clip with the same episode and clip ids
    other = "globex"
    await seed_episode(fleet, episode, media.with_audio, tenant=other)
    theirs = [{"clipId": "c", "segments": segments(("00:00:00", "00:00:03"))}]
    await put_on_queue(fleet, begin_event(episode, theirs, tenant=other))
    await run_clips(fleet)

    # Then their clip ends Generation Failed with OUTPUT_CONFLICT, at once and with a clear message
    item = await clip_item(fleet, episode, "c", tenant=other)
    assert statuses(item) == [IN_PROGRESS, FAILED]
    assert item["processingError"]["code"] == "OUTPUT_CONFLICT"
    assert "another tenant" in item["processingError"]["message"]
    # And acme's clip is untouched, in S3 and in its item
    after = await fleet.aws.s3.head_object(Bucket=media_bucket, Key=ours["s3Key"])
    assert after["ETag"] == stored["ETag"] and after["Metadata"]["tenant-id"] == TENANT
    assert (await clip_item(fleet, episode, "c"))["status"] == ours["status"] == "Generation Complete"


@pytest.mark.parametrize("kind", ["video_only", "audio_only"])
async def test_a_clip_keeps_whatever_streams_its_source_has(
    fleet: Services,
    media: Media,
    tmp_path: Path,
    kind: str,
) -> None:
    # Given a source with only video, or only audio
    episode = f"ep-{kind.replace('_', '-')}"
    await seed_episode(fleet, episode, getattr(media, kind))
    spans = segments(("00:00:00.300", "00:00:01.500"), ("00:00:03.100", "00:00:04.900"))
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "c", "segments": spans}]))

    # When the worker runs
    await run_clips(fleet)

    # Then the clip is complete with the same kinds of stream, 3 s long
    item = await clip_item(fleet, episode, "c")
    assert statuses(item) == [IN_PROGRESS, COMPLETE], item.get("processingError")
    clip = inspect_clip(await download(fleet, item["s3Key"], tmp_path / "clip.mp4"))
    if kind == "video_only":
        assert clip.audio_seconds is None and abs(clip.video_seconds - 3.0) <= FRAME
        assert item["resolution"] == "320x240"
    else:
        assert clip.video_frames == 0 and "resolution" not in item
        assert clip.audio_seconds is not None and abs(clip.audio_seconds - 3.0) <= FRAME


FAILURES = {
    # case: (segments, code, message)
    "corrupt": ([("00:00:01", "00:00:02")], "FFMPEG_ERROR", "not a readable MP4/MOV"),
    "missing": ([("00:00:01", "00:00:02")], "SOURCE_NOT_FOUND", "does not exist"),
    "out-of-range": (
        [("00:00:01", "00:00:02"), ("00:00:10", "00:00:13")],
        "INVALID_SEGMENT",
        "segment 2: endTime 00:00:13.000 is past the end of the source (00:00:12.000)",
    ),
    "backwards": ([("00:00:05", "00:00:04")], "INVALID_SEGMENT", "is not after startTime 00:00:05.000"),
    "sloppy-time": ([("0:00:01", "00:00:02")], "INVALID_SEGMENT", "segment 1: startTime: '0:00:01' is not a time"),
}


async def test_a_clip_that_cannot_be_made_ends_generation_failed_with_its_code(fleet: Services, media: Media) -> None:
    # Given sources that are corrupt, missing, or fine but asked for impossible segments (one episode each)
    corrupt = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 200
    for case, (spans, _, _) in FAILURES.items():
        source = {"corrupt": corrupt, "missing": None}.get(case, media.with_audio)
        await seed_episode(fleet, f"ep-{case}", source)
        await put_on_queue(fleet, begin_event(f"ep-{case}", [{"clipId": "bad", "segments": segments(*spans)}]))

    # When the worker runs
    worker = await run_clips(fleet)

    # Then no job was retried: each went to the DLQ at once, with its code (nothing lost)
    assert worker.stats.retried == 0
    dead = {json.loads(d["Body"])["episodeId"]: attribute(d, "fleet.error-code") for d in await dead_letters(fleet)}
    assert dead == {f"ep-{case}": code for case, (_, code, _) in FAILURES.items()}
    for case, (_, code, message) in FAILURES.items():
        # And each clip is Generation Failed with the code and a clear message, after In Progress
        item = await clip_item(fleet, f"ep-{case}", "bad")
        assert statuses(item) == [IN_PROGRESS, FAILED], case
        error = item["processingError"]
        assert error["code"] == code and message in error["message"], (case, error)
        assert set(error) == {"message", "timestamp", "code"}
        assert item["statusHistory"][-1]["code"] == code and item["status"] == FAILED
        # And no clip was written
        listed = await fleet.aws.s3.list_objects_v2(Bucket=fleet.settings.name_of(MEDIA), Prefix=f"ep-{case}/clips/")
        assert listed.get("KeyCount", 0) == 0, case


async def test_clips_come_from_the_table_and_a_redelivered_event_renders_nothing_twice(
    fleet: Services,
    media: Media,
) -> None:
    # Given an episode whose clip items (seed 002's "detected" clips) are in fleet-clips
    from shared.jobs import to_item
    from workers.clips.resources import CLIPS_TABLE

    episode = "ep-table"
    await seed_episode(fleet, episode, media.with_audio)
    table = fleet.settings.name_of(CLIPS_TABLE)
    for clip, spans in {"a": [("00:00:01.100", "00:00:02")], "b": [("00:00:03.300", "00:00:04")]}.items():
        item = {
            "pk": f"{TENANT}#{episode}",
            "sk": f"clip#{clip}",
            "status": "detected",
            "statusHistory": [{"status": "detected", "timestamp": "2026-11-27T10:00:00Z"}],
            "segments": segments(*spans),
        }
        await fleet.aws.dynamodb.put_item(TableName=table, Item=to_item(item))
    # And the same event delivered twice (EventBridge and SQS are at-least-once)
    event = begin_event(episode, event_id="evt-1")
    await put_on_queue(fleet, event)
    await put_on_queue(fleet, event)

    # When the worker runs
    worker = await run_clips(fleet)

    # Then 2 events + 4 clip jobs were handled, and each clip was rendered once
    assert (worker.stats.received, worker.stats.succeeded, worker.stats.dead_lettered) == (6, 6, 0)
    for clip in ("a", "b"):
        item = await clip_item(fleet, episode, clip)
        # The history seed 002 started ("detected") is appended to, never overwritten
        assert statuses(item) == ["detected", IN_PROGRESS, COMPLETE], item["statusHistory"]
        assert item["requestId"] == "evt-1"


async def test_fleet_submit_clips_sends_the_event_and_status_follows_each_clip(
    fleet: Services,
    media: Media,
    tmp_path: Path,
) -> None:
    from tests.test_process import run_fleet

    # Given an episode with a source, and a clips file
    episode = "ep-cli"
    await seed_episode(fleet, episode, media.with_audio)
    clips = tmp_path / "clips.json"
    clips.write_text(json.dumps([{"clipId": "x", "segments": segments(("00:00:02.040", "00:00:03"))}]))

    # When a user submits it
    done = await run_fleet(
        fleet.settings, "submit", "clips", "--tenant", TENANT, "--episode", episode, "--clips", str(clips)
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    # And the worker runs
    await run_clips(fleet)

    # Then the clip is complete, and the job's history shows the fan-out and the clip
    assert statuses(await clip_item(fleet, episode, "x")) == [IN_PROGRESS, COMPLETE]
    job = await fleet.jobs.get(job_id)
    assert job is not None
    seen = [(h["stage"], h["status"]) for h in job["history"]]
    assert ("clips", "FANNED_OUT") in seen and ("clips", "CLIP_COMPLETE") in seen

    # And a malformed submission is refused before anything is sent
    bad = await run_fleet(fleet.settings, "submit", "clips", "--tenant", "a#b", "--episode", episode)
    assert bad.returncode != 0 and "tenantId" in bad.stderr


async def test_the_demo_step_cuts_a_three_segment_clip_and_shows_its_metadata(fleet: Services) -> None:
    # When the clips step of `fleet demo` runs on the bootstrapped fleet
    out = io.StringIO()
    await demo(fleet.settings, Console(file=out, width=200, color_system=None))
    # Then both clips are complete: the 3-segment one re-encoded (7.05 s), the aligned one stream-copied
    text = out.getvalue()
    assert "received 3 (1 event + 2 clip jobs), succeeded 3, dead-lettered 0" in text, text
    highlights = next(line for line in text.splitlines() if line.startswith("│ highlights"))
    assert "Generation Complete" in highlights and "640x360" in highlights and "reencode" in highlights
    assert "(7.04 s)" in highlights, highlights  # 2.5 + 1.75 + 2.8 s = 176.25 frames at 25 fps: 176
    teaser = next(line for line in text.splitlines() if line.startswith("│ teaser"))
    assert "Generation Complete" in teaser and "copy" in teaser
    assert text.count("Generation in Progress → Generation Complete") == 2


async def test_a_message_that_is_neither_event_nor_clip_job_is_dead_lettered(fleet: Services) -> None:
    # Given a message of another shape on fleet-clips
    await put_on_queue(fleet, {"hello": "world"})
    # When the worker runs, Then it is dead-lettered at once with the reason
    worker = await run_clips(fleet)
    assert worker.stats.dead_lettered == 1
    (dead,) = await dead_letters(fleet)
    assert "neither" in attribute(dead, "fleet.error") and attribute(dead, "fleet.error-code") == "INVALID"
