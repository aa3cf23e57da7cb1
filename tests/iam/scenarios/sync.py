"""sync: with an expiring token (refreshed once, written back), the provider's library is listed and one
download job is queued per item not yet synced. Then the token paths both media-sync workers share: a
refresh another process has in flight is awaited, not repeated; a refresh the provider refuses alerts.

The media provider (workers/media_sync/provider/) runs in this process, on a port of its own per run:
the removal runs overlap, and each needs its own library, tokens and knobs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from tests.finalizer_helpers import notifications, subscribe_tap
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from tests.media_sync_helpers import (
    ACCESS_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    item,
    queued_downloads,
    seed_secret,
)
from workers.media_sync.app import MediaSync
from workers.media_sync.auth import AuthFailed
from workers.media_sync.config import MediaSyncSettings, MiB
from workers.media_sync.provider.server import Provider, serve
from workers.media_sync.resources import PROVIDER_SECRET, SYNC_TABLE
from workers.media_sync.store import SyncStore
from workers.media_sync.submit import submit
from workers.media_sync.sync_stage import SyncStage

WAIT = 60  # seconds: a generous deadline for what a loaded machine may be slow to reach


class GatedProvider(Provider):
    """The provider, whose token endpoint can be held: a refresh stays in flight until released."""

    def __init__(self) -> None:
        super().__init__(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.holding = False
        self.token_requested = asyncio.Event()
        self.released = asyncio.Event()

    async def token(self, request: web.Request) -> web.Response:
        if self.holding:
            self.token_requested.set()
            await self.released.wait()
        return await super().token(request)


@contextlib.asynccontextmanager
async def provider_for(
    library: list[dict[str, Any]], **overrides: Any
) -> AsyncIterator[tuple[GatedProvider, MediaSyncSettings]]:
    """A provider holding `library` and the test tokens, and the media-sync settings that reach it."""
    provider = GatedProvider()
    provider.reset({"library": library, "refresh_token": REFRESH_TOKEN, "access_token": ACCESS_TOKEN})
    runner, url = await serve(provider, "127.0.0.1", 0)
    config = {
        "provider_url": url,
        "allow_loopback_http": True,
        "part_size": 5 * MiB,
        "parts_in_flight": 2,
        "multipart_threshold": 5 * MiB,
        "retry_base_seconds": 0.05,
        "batch_get_backoff_seconds": 0.05,
        "read_timeout": 10,
        "max_object_bytes": 1024 * MiB,
    }
    try:
        yield provider, MediaSyncSettings(**{**config, **overrides})
    finally:
        provider.released.set()
        await runner.cleanup()


async def given_an_expiring_token(run: Run) -> None:
    """Credentials whose access token expires within the refresh threshold: the worker refreshes it."""
    await seed_secret(run.admin, expires_in=60)


async def given_the_token_expiring_again(run: Run) -> None:
    """The credentials as the last refresh wrote them (the provider rotated the refresh token), due again."""
    name = run.settings.name_of(PROVIDER_SECRET)
    current = json.loads((await run.admin.aws.secretsmanager.get_secret_value(SecretId=name))["SecretString"])
    due = (datetime.now(UTC) + timedelta(seconds=60)).isoformat(timespec="seconds")
    await run.admin.aws.secretsmanager.put_secret_value(
        SecretId=name, SecretString=json.dumps({**current, "expires_at": due})
    )


async def then_the_token_was_refreshed_once(run: Run, provider: Provider) -> None:
    assert provider.stats.token_refreshes == 1
    secret = await run.admin.aws.secretsmanager.get_secret_value(SecretId=run.settings.name_of(PROVIDER_SECRET))
    stored = json.loads(secret["SecretString"])
    assert stored["refresh_token"] != REFRESH_TOKEN and stored["access_token"] != ACCESS_TOKEN


async def a_refresh_in_flight_elsewhere_is_awaited(
    run: Run, provider: GatedProvider, config: MediaSyncSettings
) -> None:
    """Given a token expiring again, and another process (its own token manager) whose refresh of it is in
    flight, when the worker needs a token, then it finds the other's lease, waits for its write-back and
    uses that token: the provider sees one refresh, as rotating refresh tokens require."""
    await given_the_token_expiring_again(run)
    refreshes = provider.stats.token_refreshes
    provider.holding = True
    elsewhere = asyncio.create_task(MediaSync(run.admin, config).tokens.access_token())
    try:
        async with asyncio.timeout(WAIT):
            await provider.token_requested.wait()
        # Nothing else of the worker runs now: its next read of an item is of the other's lease.
        read = run.recorder.completed("dynamodb:GetItem")
        read.clear()
        here = asyncio.create_task(MediaSync(run.worker, config).tokens.access_token())
        reading = asyncio.create_task(read.wait())
        done, _ = await asyncio.wait({here, reading}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()
        assert done, "the worker neither read the other's lease nor got a token"
    finally:
        provider.released.set()
    theirs = await elsewhere
    assert await here == theirs and provider.stats.token_refreshes == refreshes + 1


async def a_refused_refresh_alerts(run: Run, provider: Provider, config: MediaSyncSettings) -> None:
    """Given a token expiring again and a provider that refuses the refresh, when the worker asks for a
    token, then it is told to retry later, one alert (without the secret) is on the notifications topic,
    and its refresh lease is given back for the next try."""
    tap = await subscribe_tap(run.admin)
    provider.set_knobs({"token_error": "invalid_grant"})
    await given_the_token_expiring_again(run)
    with pytest.raises(AuthFailed):
        await MediaSync(run.worker, config).tokens.access_token()
    (alert,) = await notifications(run.admin, tap)
    assert "token refresh failed" in alert["Subject"] and REFRESH_TOKEN not in json.dumps(alert)


def sync_store(run: Run) -> SyncStore:
    return SyncStore(run.admin.aws.dynamodb, run.settings.name_of(SYNC_TABLE))


@scenario("sync")
async def sync(run: Run) -> None:
    # Given a library of three media, one of them synced already, an expiring token, and a sync job
    # submitted as `fleet submit sync` does
    library = [item("a", 1000), item("b", 2000), item("done", 3000)]
    async with provider_for(library) as (provider, config):
        store = sync_store(run)
        assert await store.claim("done", "an-earlier-download", 60.0)
        assert await store.finish("done", "an-earlier-download", "COMPLETED", bytes=3000)
        await given_an_expiring_token(run)
        job_id = await submit(argparse.Namespace(), run.admin)
        # When sync drains its queue
        result = await run.burst(SyncStage(run.worker, MediaSync(run.worker, config)))
        # Then the two media not yet synced are queued for download, once, and the job says so
        assert result.stats.succeeded == 1 and result.dead_letters == []
        assert sorted(job["media_id"] for job in await queued_downloads(run.admin)) == ["a", "b"]
        job = await run.admin.jobs.get(job_id)
        assert job is not None and job["progress"]["sync"]["status"] == "SUCCEEDED"
        (listed,) = [h for h in job["history"] if h["status"] == "LISTED"]
        assert (listed["listed"], listed["already_synced"], listed["enqueued"]) == (3, 1, 2)
        # And the token was refreshed once and written back
        await then_the_token_was_refreshed_once(run, provider)
        # And a refresh in flight elsewhere is awaited; a refresh the provider refuses alerts
        await a_refresh_in_flight_elsewhere_is_awaited(run, provider, config)
        await a_refused_refresh_alerts(run, provider, config)
