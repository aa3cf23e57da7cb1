"""The clips worker under attack and accident: a hostile source, SIGKILL mid-render, lost replies, a
duplicated fan-out, a stuck ffmpeg."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.stage import Services
from tests.clips_helpers import (
    TENANT,
    begin_event,
    clip_item,
    download,
    put_on_queue,
    run_clips,
    seed_episode,
    segments,
    statuses,
)
from tests.media import Media, inspect_clip, media_fixture  # noqa: F401  (the session fixture)
from tests.test_process import fleet_cmd, fleet_env
from tests.throttle import ThrottleProxy
from workers.clips import command, process
from workers.clips.binaries import find_tools
from workers.clips.resources import CLIPS_TABLE, MEDIA
from workers.clips.store import COMPLETE, FAILED, IN_PROGRESS, Attempt, Begin, Busy, ClipStore

# --- a hostile source -----------------------------------------------------------------------------------


@dataclass
class Canary:
    url: str
    hits: list[str]


@pytest.fixture
def canary() -> Iterator[Canary]:
    """An HTTP server standing for "another host": it records every request it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Canary(f"http://127.0.0.1:{server.server_address[1]}", hits)
    server.shutdown()
    server.server_close()


def playlist(canary_url: str, local: Path) -> bytes:
    """An HLS playlist whose segments are another host and a local file."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
        f"#EXTINF:2.0,\n{canary_url}/internal/secret.ts\n"
        f"#EXTINF:2.0,\nfile://{local}\n#EXT-X-ENDLIST\n"
    ).encode()


async def test_an_hls_playlist_disguised_as_mp4_is_refused(fleet: Services, media: Media, canary: Canary) -> None:
    # Given a "source.mp4" that is really an HLS playlist pointing at another host and a local file,
    # served with the playlist's content type (so ffmpeg would take it for HLS despite its name)
    canary_url, hits = canary.url, canary.hits
    episode = "ep-hostile"
    key = await seed_episode(
        fleet, episode, playlist(canary_url, media.segment_ts), content_type="application/vnd.apple.mpegurl"
    )
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "c", "segments": segments(("00:00:00", "00:00:01"))}]))

    # When the worker runs
    await run_clips(fleet)

    # Then the clip failed as an unreadable source, nothing was written, and neither target was touched
    item = await clip_item(fleet, episode, "c")
    assert statuses(item) == [IN_PROGRESS, FAILED]
    assert item["processingError"]["code"] == "FFMPEG_ERROR"
    assert hits == []

    # And the render command itself refuses it (the probe above stopped it first): ffmpeg fails, no request
    url = await fleet.aws.s3.generate_presigned_url(
        "get_object", Params={"Bucket": fleet.settings.name_of(MEDIA), "Key": key}
    )
    ffmpeg = find_tools().ffmpeg
    cut = [command.Cut(0, 1)]
    args = command.reencode(
        ffmpeg, url, cut, video=True, audio=True, encoding=command.Encoding(), options=command.input_options()
    )
    with pytest.raises(process.FfmpegError):
        await process.run([a for a in args if a != "-progress" and a != command.PROGRESS], time_limit=60)
    assert hits == []

    # While the same command without the whitelists does follow the playlist to the other host
    open_args = command.reencode(ffmpeg, url, cut, video=True, audio=True, encoding=command.Encoding(), options={})
    with pytest.raises(process.FfmpegError):
        await process.run([a for a in open_args if a != "-progress" and a != command.PROGRESS], time_limit=60)
    assert hits == ["/internal/secret.ts"]


# --- SIGKILL mid-render -------------------------------------------------------------------------------------


async def test_a_worker_killed_mid_render_leaves_one_entry_per_attempt_and_the_clip_completes(
    fleet: Services, media: Media, tmp_path: Path
) -> None:
    # Given a clip job, and a worker process whose link to S3 is slow (so the render takes seconds)
    episode = "ep-kill"
    await seed_episode(fleet, episode, media.with_audio)
    spans = segments(("00:00:00.500", "00:00:03"), ("00:00:04.500", "00:00:07"), ("00:00:08.500", "00:00:11"))
    await put_on_queue(fleet, begin_event(episode, [{"clipId": "k", "segments": spans}]))
    env = {
        "FLEET_WORKERS__CLIPS__VISIBILITY_TIMEOUT": "4",
        "FLEET_DEFAULTS__WAIT_TIME_SECONDS": "1",
        "FLEET_CLIPS_PROGRESS_INTERVAL": "0.2",
        "FLEET_CLIPS_REQUEST_SIZE": "65536",  # small range reads: progress starts soon on the slow link
        "FLEET_LOG_LEVEL": "WARNING",
    }
    store = ClipStore(fleet.aws.dynamodb, fleet.settings.name_of(CLIPS_TABLE))
    with ThrottleProxy(fleet.settings.endpoint_url or "", bytes_per_second=120_000) as slow:
        proc = subprocess.Popen(
            fleet_cmd("worker", "clips"),
            env=fleet_env(fleet.settings, FLEET_ENDPOINT_URL=slow.url, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # When ffmpeg has reported progress (the render is under way), the worker is SIGKILLed
            deadline = time.monotonic() + 60
            while True:
                item = await store.clip(TENANT, episode, "k")
                if item and 0 < int(item.get("progress", 0)) < 100:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                assert time.monotonic() < deadline, f"no progress in time: {item}"
                await asyncio.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()

    # Then the clip shows the killed attempt once, still in progress, and no clip exists
    item = await clip_item(fleet, episode, "k")
    assert statuses(item) == [IN_PROGRESS] and item["statusHistory"][0]["attempt"] == 1
    listed = await fleet.aws.s3.list_objects_v2(Bucket=fleet.settings.name_of(MEDIA), Prefix=f"{episode}/")
    assert listed.get("KeyCount", 0) == 0

    # When a worker runs again (the message comes back once its visibility lapses)
    rerun = await asyncio.to_thread(
        subprocess.run,
        fleet_cmd("worker", "clips", "--burst"),
        env=fleet_env(fleet.settings, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    # Then the clip completed on the redelivery, with one entry per status per attempt
    item = await clip_item(fleet, episode, "k")
    history = [(h["status"], int(h["attempt"])) for h in item["statusHistory"]]
    assert history == [(IN_PROGRESS, 1), (IN_PROGRESS, 2), (COMPLETE, 2)], history
    clip = inspect_clip(await download(fleet, item["s3Key"], tmp_path / "clip.mp4"))
    assert abs(clip.video_seconds - 7.5) <= 1 / 25 and clip.monotonic and clip.video_gaps == 0, clip


# --- lost replies and duplicates ----------------------------------------------------------------------------


def _attempt(message: str = "m-1", receive_count: int = 1, request: str = "evt-1") -> Attempt:
    return Attempt(TENANT, "ep-store", "c", request, message, receive_count)


async def test_a_status_write_repeated_after_a_lost_reply_appends_nothing(fleet: Services) -> None:
    store = ClipStore(fleet.aws.dynamodb, fleet.settings.name_of(CLIPS_TABLE))
    attempt = _attempt()
    # Given In Progress was written, but its reply was lost: the caller (botocore's retry) writes it again
    assert await store.begin(attempt, lease_seconds=30) is Begin.STARTED
    assert await store.begin(attempt, lease_seconds=30) is Begin.STARTED
    # And the same with Complete
    assert await store.complete(attempt, {"s3Key": "k", "fileSize": 1})
    assert await store.complete(attempt, {"s3Key": "k", "fileSize": 1})
    # Then the history holds each status once
    item = await clip_item(fleet, "ep-store", "c")
    assert statuses(item) == [IN_PROGRESS, COMPLETE]
    # And a later delivery of the same request finds the clip done, and appends nothing
    assert await store.begin(_attempt("m-2"), lease_seconds=30) is Begin.DONE
    assert statuses(await clip_item(fleet, "ep-store", "c")) == [IN_PROGRESS, COMPLETE]


async def test_a_live_claim_makes_a_duplicate_wait_but_a_redelivery_takes_over(fleet: Services) -> None:
    store = ClipStore(fleet.aws.dynamodb, fleet.settings.name_of(CLIPS_TABLE))
    # Given message m-1 is rendering the clip (its claim is live for 30 s)
    first = _attempt("m-1", 1)
    assert await store.begin(first, lease_seconds=30) is Begin.STARTED
    # When a duplicate message (a repeated fan-out) arrives, Then it must wait for the claim
    with pytest.raises(Busy) as busy:
        await store.begin(_attempt("m-dup", 1), lease_seconds=30)
    assert 20 < busy.value.seconds <= 30
    # When SQS redelivers m-1 itself (its holder died), Then the redelivery takes the clip over
    second = _attempt("m-1", 2)
    assert await store.begin(second, lease_seconds=30) is Begin.STARTED
    # And the old holder, if still alive, finds its claim lost and cannot finish
    assert not await store.renew(first, lease_seconds=30, progress=50)
    assert not await store.fail(first, "FFMPEG_ERROR", "late")
    assert await store.complete(second, {"s3Key": "k"})
    history = [(h["status"], int(h["attempt"])) for h in (await clip_item(fleet, "ep-store", "c"))["statusHistory"]]
    assert history == [(IN_PROGRESS, 1), (IN_PROGRESS, 2), (COMPLETE, 2)]


async def test_a_new_request_for_a_completed_clip_renders_it_again(fleet: Services) -> None:
    store = ClipStore(fleet.aws.dynamodb, fleet.settings.name_of(CLIPS_TABLE))
    # Given a clip completed for event evt-1
    assert await store.begin(_attempt(request="evt-1"), lease_seconds=30) is Begin.STARTED
    assert await store.complete(_attempt(request="evt-1"), {"s3Key": "k"})
    # When a new Begin Clip Generation (evt-2) asks for it again, Then it is rendered again
    again = _attempt("m-9", 1, request="evt-2")
    assert await store.begin(again, lease_seconds=30) is Begin.STARTED
    item = await clip_item(fleet, "ep-store", "c")
    assert statuses(item) == [IN_PROGRESS, COMPLETE, IN_PROGRESS] and item["requestId"] == "evt-2"


# --- ffmpeg as a process --------------------------------------------------------------------------------------


async def test_a_process_without_progress_is_killed_as_stalled() -> None:
    # Given a "render" that never reports progress
    started = time.monotonic()
    # When it runs with a 1 s stall timeout, Then it is killed and reported as stalled, well before it ends
    with pytest.raises(process.FfmpegTimeout, match="no progress for 1s"):
        await process.run(["sleep", "30"], time_limit=60, stall_timeout=1, on_progress=_ignore)
    assert time.monotonic() - started < 25


async def test_a_cancelled_render_kills_its_process(tmp_path: Path) -> None:
    # Given a long-running process
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(process.run(["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 30'], time_limit=60))
    while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110 (a file, not an event)
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    # When its task is cancelled (SIGTERM drain, handler timeout)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then the process is gone
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_ffmpeg_errors_carry_the_tail_of_stderr(media: Media) -> None:
    # When ffmpeg fails, Then the error says why, in ffmpeg's words
    with pytest.raises(process.FfmpegError) as failed:
        await process.run([media.ffmpeg, "-nostdin", "-i", "/nonexistent/in.mp4", "-f", "null", "-"], time_limit=30)
    assert "No such file or directory" in str(failed.value) and failed.value.returncode != 0


async def _ignore(progress: process.Progress) -> None:
    return None


def test_the_whitelists_reach_every_input() -> None:
    # Given a render of three segments
    args = command.reencode(
        "ffmpeg",
        "https://bucket.s3.amazonaws.com/k.mp4?X-Amz-Signature=x",
        [command.Cut(1, 1), command.Cut(3, 1), command.Cut(5, 1)],
        video=True,
        audio=True,
        encoding=command.Encoding(),
        options=command.input_options(1 << 20),
    )
    # Then each -i is preceded by both whitelists and its own -ss/-t, and stdin is never read
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert len(inputs) == 3 and "-nostdin" in args
    previous = 0
    for i in inputs:
        options = args[previous:i]
        assert options[options.index("-protocol_whitelist") + 1] == "http,https,tcp,tls"
        assert options[options.index("-format_whitelist") + 1] == "mov"
        assert "-ss" in options and "-t" in options
        previous = i + 2
    assert json.dumps(args).count("concat=") == 1  # one pass
