"""`ingest`: track each announced NDJSON file once, and turn pending files into manifests.

A message is acknowledged once its files are durably tracked (one conditional put each: a repeated
notification of the same key + eTag, such as moto's extra event for a multipart completion, fails the
condition and has no effect). Building manifests is driven by the table, not by the message: an arrival
checks its date (≥ `batch_size` pending → build), and `tick()` flushes dates whose oldest pending file
waited past `max_wait_seconds` and sweeps manifests abandoned mid-way (see manifests.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.errors import Fatal
from shared.metrics import Metric
from shared.settings import load_stage_settings
from shared.stage import Context, Services
from workers.ingest.config import IngestConfig
from workers.ingest.events import Notification, parse_notification
from workers.ingest.manifests import Checkpoint, ManifestBuilder
from workers.ingest.resources import LANDING

log = logging.getLogger("fleet.ingest")


@dataclass
class IngestStats:
    tracked: int = 0
    duplicates: int = 0
    ignored: int = 0
    invalid: int = 0


class IngestStage:
    name = "ingest"
    queue = "ingest"

    def __init__(
        self,
        services: Services,
        config: IngestConfig | None = None,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.services = services
        self.config = config or load_stage_settings(IngestConfig)
        self.tick_interval = self.config.tick_seconds
        self.buckets = frozenset(self.config.allowed_buckets or [services.settings.name_of(LANDING)])
        self.builder = ManifestBuilder(services, self.config, checkpoint=checkpoint)
        self.stats = IngestStats()

    def parse(self, body: str) -> Notification:
        return parse_notification(body, buckets=self.buckets, landing_prefix=self.config.landing_prefix)

    async def handle(self, message: Notification, ctx: Context) -> None:
        if message.test_event:
            log.info("s3:TestEvent acknowledged")
            return
        new_dates: set[str] = set()
        duplicates = 0
        for file in message.files:
            if await self.builder.store.track(file):
                new_dates.add(file.date_prefix)
            else:
                duplicates += 1
        tracked = len(message.files) - duplicates
        self.stats.tracked += tracked
        self.stats.duplicates += duplicates
        self.stats.ignored += message.ignored
        self.stats.invalid += sum(message.invalid.values())
        log.debug(
            "notification tracked",
            extra={"tracked": tracked, "duplicates": duplicates, "ignored": message.ignored},
        )
        dims = {"Worker": self.name}
        await ctx.services.metrics.emit(
            Metric("FilesTracked", tracked, "Count", dims),
            Metric("DuplicateNotifications", duplicates, "Count", dims),
        )
        for date_prefix in sorted(new_dates):
            await self.builder.check(date_prefix)
        if message.invalid:
            # The valid records are tracked (idempotently, so a redrive is harmless); the message goes
            # to the DLQ so the misrouted or forged ones are seen.
            raise Fatal(message.invalid_summary(), code="INVALID_RECORDS")

    async def tick(self) -> bool:
        """Sweep abandoned manifests, then flush aged dates. True while work remains."""
        still_open = await self.builder.sweep()
        pending = await self.builder.flush_due()
        return pending or still_open > 0
