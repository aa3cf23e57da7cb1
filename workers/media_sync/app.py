"""What both media-sync stages share in one process: settings, the token manager (one lock, one cache, so
`fleet worker media-sync` refreshes once for sync and download together), the table and the bucket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx

from shared.idempotency import Idempotency
from shared.resources import LEASES
from shared.settings import load_stage_settings
from shared.stage import Services
from workers.finalizer.resources import MEDIA, NOTIFICATIONS
from workers.media_sync.auth import Alerts, TokenManager
from workers.media_sync.client import ProviderClient, timeouts
from workers.media_sync.config import MediaSyncSettings
from workers.media_sync.resources import PROVIDER_SECRET, SYNC_TABLE
from workers.media_sync.s3target import S3Target
from workers.media_sync.safety import UrlPolicy
from workers.media_sync.store import SyncStore


class MediaSync:
    _per_process: ClassVar[dict[int, tuple[Services, MediaSync]]] = {}

    def __init__(self, services: Services, config: MediaSyncSettings | None = None) -> None:
        settings = services.settings
        self.services = services
        self.config = config or load_stage_settings(MediaSyncSettings)
        self.store = SyncStore(
            services.aws.dynamodb,
            settings.name_of(SYNC_TABLE),
            retries=self.config.batch_get_retries,
            backoff=self.config.batch_get_backoff_seconds,
        )
        self.target = S3Target(services.aws.s3, settings.name_of(MEDIA))
        self.policy = UrlPolicy(allow_loopback=self.config.allow_loopback_http, trusted_hosts=self.config.trusted)
        self.tokens = TokenManager(
            self.config,
            services.aws.secretsmanager,
            settings.name_of(PROVIDER_SECRET),
            Idempotency(services.aws.dynamodb, settings.name_of(LEASES)),
            self.http,
            Alerts(services.aws.sns, settings.name_of(NOTIFICATIONS)),
        )

    @classmethod
    def of(cls, services: Services) -> MediaSync:
        """One per `Services` (per process in production): both stages share its token manager."""
        known = cls._per_process.get(id(services))
        if known is None or known[0] is not services:
            known = (services, cls(services))
            cls._per_process[id(services)] = known
        return known[1]

    @contextlib.asynccontextmanager
    async def http(self) -> AsyncIterator[httpx.AsyncClient]:
        # One client per handler call: its connections close with it, nothing outlives the message.
        async with httpx.AsyncClient(timeout=timeouts(self.config), follow_redirects=False, trust_env=False) as client:
            yield client

    @contextlib.asynccontextmanager
    async def provider(self) -> AsyncIterator[ProviderClient]:
        async with self.http() as client:
            yield ProviderClient(self.config, client, self.tokens, self.policy)
