"""finalizer: a pipeline's final event closes its job, notifies and records metrics, once however
often it is delivered."""

from __future__ import annotations

from tests.finalizer_helpers import SEED_SUCCESS, metric_sums, notifications, seed_event, subscribe_tap
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from workers.finalizer.final_event import send_final_event
from workers.finalizer.resources import MEDIA


@scenario(
    "finalizer",
    unused={"dynamodb:DeleteItem": "only when finalizing fails (the lease is released for a retry)"},
)
async def finalizer(run: Run) -> None:
    # Given a submitted job whose video is in the media bucket, a queue subscribed to the notifications,
    # and the job's final event delivered twice
    media = run.settings.name_of(MEDIA)
    event = seed_event(SEED_SUCCESS, bucket=media)
    await run.admin.aws.s3.put_object(Bucket=media, Key=event["video_key"], Body=b"\0" * 1024)
    await run.admin.jobs.create(event["execution_id"], "video", {"video_key": event["video_key"]})
    tap = await subscribe_tap(run.admin)
    for _ in range(2):
        await send_final_event(run.admin, event)
    # When the finalizer drains its queue, one event at a time
    result = await run.burst(concurrency=1)
    # Then the job is closed once, notified once, and its metrics recorded once
    assert result.stats.succeeded == 2 and result.dead_letters == []
    job = await run.admin.jobs.get(event["execution_id"])
    assert job is not None and job["status"] == "COMPLETED"
    (note,) = await notifications(run.admin, tap)
    assert "meeting.mp4" in note["Subject"]
    assert (await metric_sums(run.admin, "COMPLETED"))["ProcessingSuccess"] == 1
