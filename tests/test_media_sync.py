"""media-sync end to end against the emulator and the provider server (a real subprocess over HTTP)."""

from __future__ import annotations

import json

import pytest

from shared.app import open_services
from shared.errors import Retry
from shared.stage import Services
from tests.faultproxy import FaultProxy
from tests.media_sync_helpers import (
    config,
    context,
    dead_letters,
    item,
    object_bytes,
    object_tags,
    open_uploads,
    provider,
    queued_downloads,
    reset,
    run_downloads,
    seed_secret,
    send_download,
    served_ranges,
    sha256,
    stages,
    sync_item,
)
from workers.finalizer.resources import MEDIA
from workers.media_sync.app import MediaSync
from workers.media_sync.config import MiB
from workers.media_sync.provider.content import read, sha256_of
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.provider.server import library_of

__all__ = ["provider"]


async def test_sync_then_download_lands_every_item_byte_identical(fleet: Services, provider: ProviderProcess) -> None:
    # Given a provider library of a small and a multipart-sized item
    reset(provider, [item("a1", 300_000), item("b2", 12 * MiB, filename="../../etc/Holiday Clip!.mp4")])
    await seed_secret(fleet)
    sync, download = stages(fleet, config(provider))

    # When a sync runs and its download jobs are worked off
    await sync.sync()
    await run_downloads(fleet, download)

    # Then nothing failed
    assert [m["MessageAttributes"]["fleet.error"]["StringValue"] for m in await dead_letters(fleet)] == []
    # And both objects are in S3 under sanitised keys, byte for byte, and COMPLETED with their digest
    for media_id, size, key in [("a1", 300_000, "videos/a1/a1.mp4"), ("b2", 12 * MiB, "videos/b2/Holiday_Clip.mp4")]:
        data = await object_bytes(fleet, key)
        assert data == read(media_id, 1, 0, size)
        record = await sync_item(fleet, media_id)
        assert record["status"] == "COMPLETED"
        assert record["sha256"] == sha256(data)
        assert record["bytes"] == size
        assert record["s3_key"] == key
    assert await open_uploads(fleet) == []
    assert await queued_downloads(fleet) == []


async def test_sync_lists_every_page_and_enqueues_only_unsynced_media_in_batches(
    fleet: Services, provider: ProviderProcess, aws_endpoint: str
) -> None:
    # Given a library of 250 items (3 pages of 100), some already COMPLETED, FAILED or IN_PROGRESS
    reset(provider, library_of(250, 1000))
    await seed_secret(fleet)
    store = MediaSync(fleet, config(provider)).store
    states = {"m00001": "COMPLETED", "m00002": "COMPLETED", "m00150": "COMPLETED", "m00003": "FAILED"}
    states |= {"m00004": "IN_PROGRESS", "m00250": "DELETED"}
    for media_id, status in states.items():
        assert await store.claim(media_id, "seed", 0.0)
        assert await store.finish(media_id, "seed", status)

    # When a sync runs, its AWS calls counted by a proxy in front of the emulator
    with FaultProxy(aws_endpoint) as proxy:
        proxied = fleet.settings.model_copy(update={"endpoint_url": proxy.url})
        async with open_services(proxied) as services:
            sync, _ = stages(services, config(provider, page_size=100))
            report = await sync.sync()
        batch_gets = [r for r in proxy.requests if r.target == "DynamoDB_20120810.BatchGetItem"]
        sends = [r for r in proxy.requests if r.target == "AmazonSQS.SendMessageBatch"]

    # Then every page was listed once, and every item not COMPLETED got exactly one download job
    assert provider.stats()["list_requests"] == 3
    jobs = await queued_downloads(fleet)
    completed = {m for m, s in states.items() if s == "COMPLETED"}
    assert sorted(j["media_id"] for j in jobs) == sorted(
        f"m{i:05d}" for i in range(1, 251) if f"m{i:05d}" not in completed
    )
    assert jobs[0].keys() == {"media_id", "filename", "size"}
    assert (report.pages, report.listed, report.already_synced, report.enqueued) == (3, 250, 3, 247)
    # And in batches: one BatchGetItem per page of 100, one SendMessageBatch per 10 jobs
    assert len(batch_gets) == 3
    assert len(sends) == 25


async def test_a_64_mib_file_streams_in_parts_and_arrives_byte_identical_with_its_sha256(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a 64 MiB item, 8 MiB parts, three in flight
    size = 64 * MiB
    reset(provider, [item("big", size)])
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider, part_size=8 * MiB, parts_in_flight=3, multipart_threshold=8 * MiB))
    await send_download(fleet, {"media_id": "big", "filename": "big.mp4", "size": size})

    # When the download worker runs
    await run_downloads(fleet, download)

    # Then the object is byte-identical to the source, and its SHA-256 is recorded in fleet-sync and on the object
    data = await object_bytes(fleet, "videos/big/big.mp4")
    assert len(data) == size and sha256(data) == sha256_of("big", 1, size)
    record = await sync_item(fleet, "big")
    assert (record["status"], record["bytes"], record["sha256"]) == ("COMPLETED", size, sha256(data))
    assert await object_tags(fleet, "videos/big/big.mp4") == {"sha256": sha256(data)}
    head = await fleet.aws.s3.head_object(Bucket=fleet.settings.name_of(MEDIA), Key="videos/big/big.mp4")
    assert head["Metadata"]["source-id"] == "big" and head["Metadata"]["source-size"] == str(size)
    # And it went up as 8 parts of one multipart upload, each requested from the provider exactly once
    assert head["ETag"].strip('"').endswith("-8")
    assert [d["sent"] for d in served_ranges(provider, "big")] == [size]
    assert await open_uploads(fleet) == []


async def test_a_dropped_connection_resumes_with_range_and_requests_less_than_a_part_again(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a 23 MiB item whose connection drops after 13 MiB (two 5 MiB parts uploaded, a third half read)
    size, part = 23 * MiB, 5 * MiB
    reset(provider, [item("flaky", size)], drop_after={"flaky": 13 * MiB})
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider, part_size=part))
    await send_download(fleet, {"media_id": "flaky", "filename": "flaky.mp4", "size": size})

    # When the download worker runs
    await run_downloads(fleet, download)

    # Then it went on with a Range request guarded by If-Range, and asked again for under one part
    served = served_ranges(provider, "flaky")
    assert [d.get("dropped", False) for d in served] == [True, False]
    assert served[1]["range"] is not None and served[1]["if_range"] is not None
    resumed_at = int(served[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 2 * part <= resumed_at <= 13 * MiB
    requested_again = sum(d["sent"] for d in served) - size
    assert 0 <= requested_again < part
    # And the object is whole
    data = await object_bytes(fleet, "videos/flaky/flaky.mp4")
    assert sha256(data) == sha256_of("flaky", 1, size)
    assert (await sync_item(fleet, "flaky"))["sha256"] == sha256(data)


async def test_a_source_that_changed_before_a_resume_is_downloaded_again_from_the_start(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a first attempt that uploaded two parts and failed on a drop (no in-process resume allowed)
    size, part = 16 * MiB, 5 * MiB
    reset(provider, [item("edited", size)], drop_after={"edited": 12 * MiB})
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider, part_size=part, stream_resumes=0))
    job = download.parse(json.dumps({"media_id": "edited", "filename": "edited.mp4", "size": size}))
    with pytest.raises(Retry):
        await download.handle(job, context(fleet, attempt=1))
    record = await sync_item(fleet, "edited")
    assert record["status"] == "IN_PROGRESS" and record["upload_id"]
    assert len(await open_uploads(fleet)) == 1

    # When the source is edited (same size, new bytes and ETag) before the retry
    provider.control("library", {"items": [item("edited", size, version=2)]})
    await download.handle(job, context(fleet, attempt=2))

    # Then the retry's If-Range did not match, the old upload was aborted, and the new bytes were stored whole
    served = served_ranges(provider, "edited")
    assert [(d["range"] is not None, d["status"]) for d in served] == [(False, 200), (True, 200), (False, 200)]
    data = await object_bytes(fleet, "videos/edited/edited.mp4")
    assert sha256(data) == sha256_of("edited", 2, size)
    assert (await sync_item(fleet, "edited"))["sha256"] == sha256(data)
    assert await open_uploads(fleet) == []
