"""media-sync end to end against the emulator and the provider server (a real subprocess over HTTP)."""

from __future__ import annotations

from shared.stage import Services
from tests.media_sync_helpers import (
    config,
    dead_letters,
    item,
    object_bytes,
    open_uploads,
    provider,
    queued_downloads,
    reset,
    run_downloads,
    run_sync,
    seed_secret,
    sha256,
    stages,
    sync_item,
)
from workers.media_sync.config import MiB
from workers.media_sync.provider.content import read
from workers.media_sync.provider.process import ProviderProcess

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
