"""Building manifests and handing them to `compact`, so that a crash at any point converges.

Invariants, whatever crashes where:
  (1) a file is in at most one manifest;
  (2) a claimed file is listed by the manifest that claimed it;
  (3) every manifest that claimed a file ends SUBMITTED: its JSON is in fleet-lake and a compact job
      is queued.

The steps, each one write (no locks, no transactions):
  1. take the date's slot (`d#slot`: free, or its lease expired) — only so that racing workers do not
     split one batch of 200 into two halves; it is not what makes claims safe;
  2. read the date's oldest pending files and write the manifest record: CLAIMING, those *candidates*,
     an owner token and a lease; from now on it is in the sparse `todo` index, by lease expiry;
  3. claim each candidate: pending → manifested with the manifest id, condition `status = pending`;
     candidates claimed elsewhere first (the index lags) are replaced by the next pending files, which
     are added to the record's candidates *before* being claimed;
  4. seal: the record lists exactly the candidates it claimed and becomes SEALED, condition
     `state = CLAIMING AND owner = me`; free the slot;
  5. record the manifest as a job in fleet-jobs, write manifests/<date>/<id>.json, send the compact job;
  6. mark SUBMITTED (condition: still SEALED and mine), which takes it out of the `todo` index.

Why it holds:
  (1) a claim is a conditional update from `pending`; no state leads back to `pending`.
  (2) a manifest only ever claims its own candidates, and step 4 lists those it owns. A crash before 4
      leaves a CLAIMING record whose lease expires; any worker's tick() sweeps it: it takes the record
      over (a conditional write on the lease it saw: one sweeper wins, and the old owner's seal now
      fails its owner condition), then claims every candidate still pending for the same manifest.
      After that pass no candidate is pending, so the set of files owned by the manifest cannot grow
      any more — even a stalled old owner's late claims fail — and that final set is what it seals.
      A claim whose reply was lost and whose retry then fails its condition is recognised as ours by
      the item the failure returns.
  (3) a record stays in the `todo` index until step 6. A crash between 4 and 6 leaves it SEALED with an
      expired lease: the sweeper takes it over and redoes step 5 from the record — the same JSON bytes,
      the same job. A worker that stalls past its lease between its last write and its send may queue
      the job twice; compact's output key is a function of the manifest id, so a second run rewrites
      the same Parquet object: no duplicate rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from shared.stage import JOB_ID, JOB_ID_ATTRIBUTE, Services
from workers.ingest.config import IngestConfig
from workers.ingest.layout import manifest_key
from workers.ingest.resources import COMPACT, FILES, LAKE
from workers.ingest.store import (
    CLAIMING,
    EMPTY,
    SEALED,
    FileRef,
    FilesTable,
    ManifestRecord,
    OpenManifest,
    PendingFile,
    iso,
)

log = logging.getLogger("fleet.ingest")

CLAIM_CONCURRENCY = 16
MAX_ATTEMPTS = 3  # a batch whose candidates were all claimed elsewhere is re-queried this often
MAX_MANIFESTS_PER_CHECK = 50  # a backlog drains over several checks rather than one endless one
CHECK_PASSES = 2  # re-checks a date when files arrived during a check, at most this often

# Awaited at named points ("opened", "claim", "claimed", "manifest_written", "handed_off") with the
# manifest id: tests inject crashes here.
Checkpoint = Callable[[str, str], Awaitable[None]]


class ManifestBuilder:
    def __init__(
        self,
        services: Services,
        config: IngestConfig,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.services = services
        self.config = config
        self.store = FilesTable(services.aws.dynamodb, services.settings.name_of(FILES))
        self._checkpoint = checkpoint
        self._compact_url: str | None = None
        self._busy: set[str] = set()
        self._dirty: set[str] = set()
        self._last_check: dict[str, float] = {}
        self.built = 0
        self.recovered = 0

    async def _at(self, point: str, manifest_id: str) -> None:
        if self._checkpoint is not None:
            await self._checkpoint(point, manifest_id)

    # --- when to build -------------------------------------------------------------------------------

    async def check(self, date_prefix: str, *, aged: bool = False) -> None:
        """Build every manifest the date is ready for.

        Checks of one date in this process coalesce: while one runs, arrivals only mark the date dirty
        and the running check counts again — at most every `check_interval_seconds`. So a burst of
        arrivals costs one COUNT query per interval and worker, not one per file.
        """
        if date_prefix in self._busy:
            self._dirty.add(date_prefix)
            return
        self._busy.add(date_prefix)
        try:
            for _ in range(CHECK_PASSES):
                wait = self._last_check.get(date_prefix, 0.0) + self.config.check_interval_seconds
                if not aged and wait > time.monotonic():
                    await asyncio.sleep(wait - time.monotonic())
                self._dirty.discard(date_prefix)
                self._last_check[date_prefix] = time.monotonic()
                batch = self.config.batch_size
                if aged or await self.store.count_pending(date_prefix, batch) >= batch:
                    await self._drain(date_prefix)
                aged = False
                if date_prefix not in self._dirty:
                    break
        finally:
            self._busy.discard(date_prefix)

    async def flush_due(self) -> bool:
        """Check every date with pending files: flush it if its oldest waited past the max wait (a full
        batch no arrival noticed is built too). True while any file is pending."""
        after: str | None = None
        any_pending = False
        while True:
            oldest = await self.store.first_pending(after)
            if oldest is None:
                return any_pending
            any_pending = True
            date_prefix = oldest.date_prefix
            await self.check(date_prefix, aged=oldest.age_seconds() >= self.config.max_wait_seconds)
            after = date_prefix

    def _ready(self, candidates: list[PendingFile]) -> bool:
        if not candidates:
            return False
        if len(candidates) >= self.config.batch_size:
            return True
        return candidates[0].age_seconds() >= self.config.max_wait_seconds

    async def _drain(self, date_prefix: str) -> None:
        for _ in range(MAX_MANIFESTS_PER_CHECK):
            if not await self._build_one(date_prefix):
                return

    async def _build_one(self, date_prefix: str) -> bool:
        for _ in range(MAX_ATTEMPTS):
            manifest_id = str(uuid.uuid4())
            owner = uuid.uuid4().hex
            lease_until = time.time() + self.config.lease_seconds
            if not await self.store.take_slot(date_prefix, manifest_id, lease_until):
                return False  # another worker is filling this date; its drain goes on when done
            # Read only once the slot is ours: read before, they may include the files the previous
            # holder was still claiming, and this batch would come out short.
            candidates = await self.store.pending(date_prefix, self.config.batch_size)
            if not self._ready(candidates):
                await self.store.free_slot(date_prefix, manifest_id)
                return False
            record = ManifestRecord(
                manifest_id=manifest_id,
                date_prefix=date_prefix,
                created_at=iso(),
                state=CLAIMING,
                candidates=[c.ref for c in candidates],
                files=[],
            )
            if not await self.store.open_record(record, owner, lease_until):
                await self.store.free_slot(date_prefix, manifest_id)
                return False  # a fresh id taken by someone else: nothing of ours to finish
            await self._at("opened", manifest_id)
            owned = await self._claim_all(record, record.candidates)
            if not await self._top_up(record, owner, owned):
                return False  # taken over while claiming (we were too slow): the sweeper finishes it
            sealed = await self._seal(record, owner, owned)
            if sealed is None:
                return False
            if not sealed.files:
                continue  # the index was stale: every candidate was already claimed
            await self._hand_off(sealed, owner)
            self.built += 1
            return True
        return False

    # --- claiming ------------------------------------------------------------------------------------

    async def _claim_all(self, record: ManifestRecord, refs: list[FileRef]) -> dict[str, bool]:
        """Claim each of `refs` (candidates of `record`) that is still pending; which are now ours."""
        gate = asyncio.Semaphore(CLAIM_CONCURRENCY)
        owned: dict[str, bool] = {}

        async def claim(ref: FileRef) -> None:
            async with gate:
                await self._at("claim", record.manifest_id)
                owned[ref.file_key] = await self.store.claim(record.date_prefix, ref, record.manifest_id)

        # A TaskGroup cancels the other claims if one fails: a failed builder stops claiming (the
        # sweeper finishes), and the first error, unwrapped, tells the runtime how to retry.
        try:
            async with asyncio.TaskGroup() as group:
                for ref in refs:
                    group.create_task(claim(ref))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        await self._at("claimed", record.manifest_id)
        return owned

    async def _top_up(self, record: ManifestRecord, owner: str, owned: dict[str, bool]) -> bool:
        """Replace candidates that were claimed elsewhere (the index lags behind claims) by the next
        pending files, so a batch comes out whole. New candidates are recorded before they are claimed,
        as the first ones were. False if the record was taken over meanwhile."""
        for _ in range(MAX_ATTEMPTS):
            short = self.config.batch_size - sum(owned.values())
            if short <= 0:
                return True
            # The record lists every candidate; a bound on them keeps it inside DynamoDB's 400 KB.
            room = self.config.batch_size + self.config.batch_size // 4 - len(record.candidates)
            known = {ref.file_key for ref in record.candidates}
            fresh = await self.store.pending(record.date_prefix, self.config.batch_size)
            extra = [p.ref for p in fresh if p.ref.file_key not in known][: min(short, room)]
            if not extra:
                return True
            if not await self.store.add_candidates(record, owner, extra):
                return False
            record.candidates += extra
            owned.update(await self._claim_all(record, extra))
        return True

    async def _seal(self, record: ManifestRecord, owner: str, owned: dict[str, bool]) -> ManifestRecord | None:
        # Each file once, even if a record from an older release listed a candidate twice.
        files = list({ref.file_key: ref for ref in record.candidates if owned.get(ref.file_key)}.values())
        if not await self.store.seal(record, owner, files):
            log.warning("manifest taken over before it was sealed", extra={"manifest_id": record.manifest_id})
            return None
        await self.store.free_slot(record.date_prefix, record.manifest_id)
        record.files = files
        record.state = SEALED if files else EMPTY
        return record

    # --- handing off -----------------------------------------------------------------------------

    async def _hand_off(self, record: ManifestRecord, owner: str) -> None:
        mid, date_prefix = record.manifest_id, record.date_prefix
        key = manifest_key(date_prefix, mid)
        jobs = self.services.jobs
        compact = self.services.settings.name_of(COMPACT)
        uploads = upload_prefixes(record.files, self.config.landing_prefix)
        await jobs.create(
            mid,
            "manifest",
            {"date_prefix": date_prefix, "manifest_key": key, "uploads": sorted(uploads)},
            queue=compact,
        )
        await jobs.record_stage(
            mid, "ingest", "MANIFESTED", files=len(record.files), recovered=record.recovered or None
        )
        for upload_id, (prefix, count) in uploads.items():
            # An upload (`fleet submit ingest`) learns where its files went; only the upload whose prefix
            # the files really sit under, and only an upload job, can be linked.
            await jobs.link(upload_id, "ingest", {"prefix": prefix}, f"children.{mid}", count)
        body = {
            "manifest_id": mid,
            "date_prefix": date_prefix,
            "created_at": record.created_at,
            "files": [f.entry() for f in record.files],
        }
        await self.services.aws.s3.put_object(
            Bucket=self.services.settings.name_of(LAKE),
            Key=key,
            Body=json.dumps(body, separators=(",", ":")).encode(),
            ContentType="application/json",
        )
        await self._at("manifest_written", mid)
        await self.services.aws.sqs.send_message(
            QueueUrl=await self._compact_queue(),
            MessageBody=json.dumps({"manifest_id": mid, "date_prefix": date_prefix, "manifest_key": key}),
            MessageAttributes={JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": mid}},
        )
        await self._at("handed_off", mid)
        await self.store.mark_submitted(record, owner)
        log.info(
            "manifest submitted",
            extra={
                "manifest_id": mid,
                "date_prefix": date_prefix,
                "files": len(record.files),
                "recovered": record.recovered,
            },
        )

    async def _compact_queue(self) -> str:
        if self._compact_url is None:
            sqs = self.services.aws.sqs
            name = self.services.settings.name_of(COMPACT)
            self._compact_url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        return self._compact_url

    # --- the sweeper -----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Finish every open manifest whose lease expired; returns how many are still open."""
        now = iso()
        still_open = 0
        for seen in await self.store.open_manifests():
            if seen.lease >= now or not await self._recover(seen):
                still_open += 1
        return still_open

    async def _recover(self, seen: OpenManifest) -> bool:
        owner = uuid.uuid4().hex
        record = await self.store.take_over(seen, owner, time.time() + self.config.lease_seconds)
        if record is None:
            return False  # another sweeper got there first
        log.warning(
            "recovering an abandoned manifest",
            extra={"manifest_id": record.manifest_id, "was": record.state},
        )
        if record.state == CLAIMING:
            # Claim every candidate still pending for this manifest: after this pass none is pending,
            # so what the manifest owns can no longer change, whoever else is still running.
            sealed = await self._seal(record, owner, await self._claim_all(record, record.candidates))
            if sealed is None:
                return False
            record = sealed
        if record.files:
            await self._hand_off(record, owner)
        self.recovered += 1
        return True


def upload_prefixes(files: list[FileRef], landing_prefix: str) -> dict[str, tuple[str, int]]:
    """Upload job id -> (its key prefix, files of this manifest under it), for files that `fleet submit ingest`
    uploaded (`<landing>/<date>/<job id>/<name>`)."""
    found: dict[str, tuple[str, int]] = {}
    for f in files:
        parts = f.key.split("/")
        if len(parts) >= 4 and f"{parts[0]}/" == landing_prefix and JOB_ID.fullmatch(parts[2]):
            prefix = "/".join(parts[:3]) + "/"
            _, count = found.get(parts[2], (prefix, 0))
            found[parts[2]] = (prefix, count + 1)
    return found
