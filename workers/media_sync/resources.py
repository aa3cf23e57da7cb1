"""What media-sync owns: its two queues, the sync-status table and the provider's credentials.
It also writes to `fleet-media` and alerts on `fleet-notifications` (both declared by the finalizer)."""

from __future__ import annotations

from shared.resources import Queue, Secret, Table

SYNC_QUEUE = Queue("sync", "fleet-sync")
DOWNLOAD_QUEUE = Queue("download", "fleet-download")
SYNC_TABLE = Table("sync", "fleet-sync", hash_key="media_id")
# The contract's fields (shared/contracts.md); bootstrap creates the secret with empty values.
PROVIDER_SECRET = Secret(
    "media-provider",
    "fleet/media-provider",
    placeholder={"client_id": "", "client_secret": "", "access_token": "", "refresh_token": "", "expires_at": ""},
)
