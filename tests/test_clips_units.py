"""The clips worker's rules, piece by piece: segment times, message shapes, frame counts, fast-mode
eligibility, the streamed upload, probing."""

from __future__ import annotations

import hashlib
import math
import shutil

import pytest

from shared.errors import Poison
from shared.stage import Services
from tests.media import FPS, Media, media_fixture  # noqa: F401  (the session fixture)
from workers.clips import process
from workers.clips.command import frame_counts
from workers.clips.config import MIB
from workers.clips.errors import InvalidSegment
from workers.clips.models import BeginClipGeneration, ClipJob, Segment, Span, check_within, parse_message, plan_spans
from workers.clips.probe import MediaInfo, Prober, VideoInfo
from workers.clips.render import keyframe_aligned
from workers.clips.resources import MEDIA
from workers.clips.timecode import format_ms, hhmmss, parse_time
from workers.clips.upload import StreamingUpload


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("00:00:00", 0),
        ("00:15:30", 930_000),
        ("01:02:03.5", 3_723_500),
        ("00:00:01.05", 1_050),
        ("99:59:59.999", 359_999_999),
    ],
)
def test_segment_times_are_hh_mm_ss_with_optional_milliseconds(text: str, ms: int) -> None:
    assert parse_time(text) == ms
    assert parse_time(format_ms(ms)) == ms


@pytest.mark.parametrize(
    "bad",
    ["0:00:01", "00:60:00", "00:00:60", "00:00:01.1234", "00:00:01.", " 00:00:01", "00:00:01Z", "1.5", "", None, 90],
)
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="time"):
        parse_time(bad)


def test_the_seed_duration_format_rounds_to_seconds() -> None:
    assert (hhmmss(135.4), hhmmss(4.88), hhmmss(3599.6)) == ("00:02:15", "00:00:05", "01:00:00")


def _segments(*pairs: tuple[object, object]) -> list[Segment]:
    return [Segment(startTime=a, endTime=b) for a, b in pairs]


def test_segments_must_run_forwards_within_the_caps() -> None:
    # Good segments become millisecond spans, in the producer's order (a clip may reorder its source)
    spans = plan_spans(
        _segments(("00:00:05", "00:00:06.5"), ("00:00:01", "00:00:02")), max_segments=3, max_clip_seconds=10
    )
    assert spans == [Span(5000, 6500), Span(1000, 2000)]
    with pytest.raises(InvalidSegment, match="no segments"):
        plan_spans([], max_segments=3, max_clip_seconds=10)
    with pytest.raises(InvalidSegment, match="has 4 segments; at most 3"):
        plan_spans(_segments(*[("00:00:01", "00:00:02")] * 4), max_segments=3, max_clip_seconds=10)
    with pytest.raises(InvalidSegment, match=r"is 00:00:11\.000 long; at most 00:00:10\.000"):
        plan_spans(_segments(("00:00:00", "00:00:11")), max_segments=3, max_clip_seconds=10)
    with pytest.raises(InvalidSegment, match=r"segment 2: endTime 00:00:03\.000 is not after startTime 00:00:03\.000"):
        plan_spans(_segments(("00:00:01", "00:00:02"), ("00:00:03", "00:00:03")), max_segments=3, max_clip_seconds=10)
    with pytest.raises(InvalidSegment, match=r"segment 1: endTime: missing \(expected a time HH:MM:SS"):
        plan_spans(_segments(("00:00:01", None)), max_segments=3, max_clip_seconds=10)


def test_segments_must_end_inside_the_source() -> None:
    check_within([Span(0, 12_000)], 12.0004)  # the end itself is inside
    with pytest.raises(InvalidSegment, match="past the end of the source"):
        check_within([Span(0, 12_001)], 12.0)
    with pytest.raises(InvalidSegment, match="duration is unknown"):
        check_within([Span(0, 1)], None)


def test_the_queue_carries_events_and_clip_jobs_and_nothing_else() -> None:
    event = parse_message(
        '{"id": "e1", "source": "s", "detail-type": "Begin Clip Generation", "account": "1", '
        '"detail": {"tenantId": "t", "episodeId": "e", "clips": [{"clipId": "c", "segments": []}]}}'
    )
    assert isinstance(event, BeginClipGeneration) and event.detail.clips and event.detail.clips[0].clipId == "c"
    job = parse_message(
        '{"kind": "clip", "tenantId": "t", "episodeId": "e", "clipId": "c", "requestId": "r", "segments": []}'
    )
    assert isinstance(job, ClipJob) and job.videoKey is None
    for body, reason in [
        ('{"detail-type": "Other", "source": "s", "detail": {}}', "detail-type"),
        ('{"detail-type": "Begin Clip Generation", "source": "s", "detail": {"tenantId": "t"}}', "episodeId"),
        (
            '{"detail-type": "Begin Clip Generation", "source": "s", "detail": {"tenantId": "a/b", "episodeId": "e"}}',
            "tenantId",
        ),
        (
            '{"kind": "clip", "tenantId": "t", "episodeId": "../e", "clipId": "c", "requestId": "r", "segments": []}',
            "episodeId",
        ),
        ('{"what": 1}', "neither"),
        ("[1]", "neither"),
    ]:
        with pytest.raises(Poison, match=reason):
            parse_message(body)


def test_frame_counts_round_the_whole_clip_once() -> None:
    # Three 2.5 s segments at 25 fps: 62.5 frames each; rounding each would make 189 (7.56 s), not 188 (7.5 s)
    counts = frame_counts([2.5, 2.5, 2.5], 25)
    assert sum(counts) == round(7.5 * 25) and max(counts) - min(counts) <= 1
    # At 29.97 fps, 100 segments of 1.001 s come to exactly 3000 frames
    assert sum(frame_counts([1.001] * 100, 30000 / 1001)) == 3000


def test_fast_mode_needs_every_cut_on_a_keyframe() -> None:
    video = VideoInfo(320, 240, 25.0, "h264")
    info = MediaInfo("mov", 12.0, video, None, keyframes={1.0: 1.0, 3.0: 3.0, 4.5: 4.0, 12.0: 11.0})
    assert keyframe_aligned(info, [Span(1000, 3000)])
    assert not keyframe_aligned(info, [Span(1000, 4500)])  # the end is mid-GOP
    assert keyframe_aligned(info, [Span(1000, 12000)])  # the source's own end counts as aligned
    assert not keyframe_aligned(MediaInfo("mov", 12.0, None, None), [Span(1000, 3000)])  # audio only


async def test_a_large_output_goes_up_in_parts_while_ffmpeg_writes_it(fleet: Services, media: Media) -> None:
    s3, bucket = fleet.aws.s3, fleet.settings.name_of(MEDIA)
    # Given ffmpeg writing ~17 MB (raw video) to its stdout, and an upload with 5 MiB parts
    upload = StreamingUpload(s3, bucket, "big/raw.nut", part_size=5 * MIB, content_type="video/x-nut")
    raw = [media.ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}"]
    raw += ["-t", "2", "-c:v", "rawvideo", "-pix_fmt", "yuv420p", "-f", "nut", "pipe:1"]
    # When the output is streamed into it
    await process.run(raw, time_limit=60, stdout=upload.write)
    size = await upload.complete()
    # Then it went up in parts of 5 MiB, and the object is byte for byte what ffmpeg wrote
    assert size > 15 * MIB and upload.parts == math.ceil(size / (5 * MIB))
    obj = await s3.get_object(Bucket=bucket, Key="big/raw.nut")
    async with obj["Body"] as body:
        stored = await body.read()
    assert len(stored) == size and hashlib.sha256(stored).hexdigest() == upload.sha256.hexdigest()

    # And a render that fails after some parts went up leaves no object and no parts behind
    failed = StreamingUpload(s3, bucket, "big/failed.nut", part_size=5 * MIB)
    await failed.write(stored[: 11 * MIB])
    assert failed.parts == 2
    await failed.abort()
    assert (await s3.list_objects_v2(Bucket=bucket, Prefix="big/failed")).get("KeyCount", 0) == 0
    assert (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", []) == []

    # And a small output is a single PutObject
    small = StreamingUpload(s3, bucket, "big/small.bin", part_size=5 * MIB)
    await small.write(b"x" * 1000)
    assert await small.complete() == 1000 and small.upload_id is None


async def test_pyav_probes_streams_and_keyframes(media: Media) -> None:
    # Given the 12 s test source (1 s keyframes), read through a file URL here (the worker uses HTTP)
    prober = Prober(None, timeout=30)
    prober.options = {"protocol_whitelist": "file", "format_whitelist": "mov"}
    # When it is probed with three cut points
    info = await prober.probe(str(media.with_audio), [2.0, 4.5, 11.96])
    # Then its streams, duration and the keyframe before each point are known
    assert info.video is not None and (info.video.resolution, info.video.fps, info.video.codec) == (
        "320x240",
        25.0,
        "h264",
    )
    assert info.audio is not None and (info.audio.codec, info.audio.sample_rate) == ("aac", 48000)
    assert info.duration is not None and abs(info.duration - 12.0) < 0.05
    assert info.keyframes == {2.0: 2.0, 4.5: 4.0, 11.96: 11.0}


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="no ffprobe on PATH (the Docker image has Debian's)")
async def test_ffprobe_and_pyav_agree(media: Media) -> None:
    options = {"protocol_whitelist": "file", "format_whitelist": "mov"}
    pyav, ffprobe = Prober(None, timeout=30), Prober(shutil.which("ffprobe"), timeout=30)
    pyav.options = ffprobe.options = options
    a = await pyav.probe(str(media.with_audio), [2.0, 4.5])
    b = await ffprobe.probe(str(media.with_audio), [2.0, 4.5])
    assert (a.video, a.audio and a.audio.codec, a.keyframes) == (b.video, b.audio and b.audio.codec, b.keyframes)
