"""download: with an expiring token, media stream from the provider into S3 (one PUT, or a multipart
upload that the next attempt after a dropped connection picks up from its recorded parts), media deleted
at source leave no upload behind, and an object a crashed worker stored is recorded from its digest tag.
Then the token paths both media-sync workers share (tests/iam/scenarios/sync.py)."""

from __future__ import annotations

from shared.app import send_job
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from tests.iam.scenarios.sync import (
    a_refresh_in_flight_elsewhere_is_awaited,
    a_refused_refresh_alerts,
    given_an_expiring_token,
    provider_for,
    sync_store,
    then_the_token_was_refreshed_once,
)
from tests.media_sync_helpers import item, object_bytes, object_tags, open_uploads, send_download, sha256
from workers.finalizer.resources import MEDIA
from workers.media_sync.app import MediaSync
from workers.media_sync.config import MiB
from workers.media_sync.download_stage import DownloadStage
from workers.media_sync.models import object_key
from workers.media_sync.provider.content import read, sha256_of
from workers.media_sync.resources import DOWNLOAD_QUEUE

SMALL, LARGE = 200_000, 5 * MiB + 512 * 1024  # one PUT; two parts of a multipart upload


def job(media_id: str, size: int) -> dict[str, object]:
    """A download job as sync queues it."""
    return {"media_id": media_id, "filename": f"{media_id}.mp4", "size": size}


async def given_an_unrecorded_object(run: Run, media_id: str, size: int) -> None:
    """What a worker that crashed after storing a multipart object (metadata, digest tag), before
    recording it in fleet-sync, left behind."""
    key = object_key("videos/", media_id, f"{media_id}.mp4")
    await run.admin.aws.s3.put_object(
        Bucket=run.settings.name_of(MEDIA),
        Key=key,
        Body=read(media_id, 1, 0, size),
        Metadata={"source-id": media_id, "source-size": str(size)},
        Tagging=f"sha256={sha256_of(media_id, 1, size)}",
    )


@scenario("download")
async def download(run: Run) -> None:
    # Given a provider whose connection drops once in "large" and in "gone" ("gone" is deleted at source
    # right after), an object "stored" that a crashed worker never recorded, an expiring token, and one
    # download job per media ("small" tracked as a job of its own)
    library = [item("small", SMALL), item("large", LARGE), item("gone", LARGE), item("stored", SMALL)]
    async with provider_for(library, stream_resumes=0) as (provider, config):
        provider.set_knobs({"drop_after": {"large": 256 * 1024, "gone": 256 * 1024}, "fail_after_drop": {"gone": 404}})
        await given_an_unrecorded_object(run, "stored", SMALL)
        await given_an_expiring_token(run)
        job_id = await send_job(run.admin, DOWNLOAD_QUEUE, job("small", SMALL), kind="download", terminal="download")
        for media_id, size in (("large", LARGE), ("gone", LARGE), ("stored", SMALL)):
            await send_download(run.admin, job(media_id, size))
        # When download drains its queue, one job at a time (the dropped transfers fail their first attempt).
        # Its transfer lease is renewed each heartbeat: a renewal still in flight when a failed attempt hands
        # the lease back can extend it again, and the retry then waits it out (a third retry). Beats a
        # second apart (not the harness's 0.2 s) keep that rare in attempts this short.
        stage = DownloadStage(run.worker, MediaSync(run.worker, config))
        result = await run.burst(stage, concurrency=1, heartbeat_interval=1.0)
        # Then every media reached its final state, with no multipart upload left open
        assert result.stats.succeeded == 4 and result.stats.retried >= 2 and result.dead_letters == []
        store = sync_store(run)
        records = {m: await store.get(m) or {} for m in ("small", "large", "gone", "stored")}
        assert {m: r.get("status") for m, r in records.items()} == {
            "small": "COMPLETED",
            "large": "COMPLETED",
            "gone": "DELETED",
            "stored": "COMPLETED",
        }
        assert await open_uploads(run.admin) == []
        # And each stored media is byte-identical to the source, its digest recorded and tagged
        for media_id, size in (("small", SMALL), ("large", LARGE), ("stored", SMALL)):
            key = object_key("videos/", media_id, f"{media_id}.mp4")
            expected = sha256_of(media_id, 1, size)
            assert sha256(await object_bytes(run.admin, key)) == expected == records[media_id]["sha256"]
            assert (await object_tags(run.admin, key))["sha256"] == expected
        # And "large" was asked for again after its drop (a resume), "stored" never downloaded
        served = [d["id"] for d in provider.stats.downloads]
        assert served.count("large") == 2 and "stored" not in served
        # And the tracked job ended with its download
        tracked = await run.admin.jobs.get(job_id)
        assert tracked is not None and tracked["progress"]["download"]["status"] == "SUCCEEDED"
        # And the token was refreshed once and written back; a refresh in flight elsewhere is awaited; a
        # refresh the provider refuses alerts
        await then_the_token_was_refreshed_once(run, provider)
        await a_refresh_in_flight_elsewhere_is_awaited(run, provider, config)
        await a_refused_refresh_alerts(run, provider, config)
