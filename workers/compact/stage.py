"""`compact`: one manifest → `parquet/date=<date>/<manifest_id>.parquet`, bad lines → quarantine.

Exactly-once in effect: the output keys are functions of the manifest id, and the Parquet file is
written locally and uploaded whole, so a retry, a duplicate job or an operator's re-run overwrites the
same object with the same rows — never a second copy. Source files are read with `IfMatch` on the eTag
the manifest recorded: an object overwritten since (a new version, tracked as a new file) is reported in
quarantine instead of being read twice. Then the manifest and its files are marked `compacted` with row
counts, and — once per manifest, guarded in fleet-leases — the job is handed to the finalizer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from shared.errors import S3_NO_SUCH_KEY, Fatal, error_code, is_conditional_failure
from shared.idempotency import Idempotency
from shared.jobs import now_iso
from shared.metrics import Metric
from shared.resources import LEASES
from shared.settings import load_stage_settings
from shared.stage import Context, Services, parse_body
from workers.compact.config import CompactConfig
from workers.compact.convert import (
    FileSpool,
    SchemaTooWide,
    concat_quarantine,
    unified_schema,
    write_parquet,
)
from workers.finalizer.final_event import final_event, send_final_event
from workers.ingest.layout import (
    ETAG_RE,
    CompactJob,
    Manifest,
    ManifestFile,
    file_item_key,
    manifest_item_key,
    manifest_key,
    parquet_key,
    quarantine_key,
)
from workers.ingest.resources import FILES, LAKE, LANDING
from workers.ingest.s3io import upload_file
from workers.ingest.store import COMPACTED, MANIFEST_COMPACTED, FilesTable, Item, N, S

log = logging.getLogger("fleet.compact")

CHANGED = {"PreconditionFailed", "412"}


@dataclass(frozen=True)
class Compaction:
    files: int
    rows: int
    columns: int
    quarantined: int
    missing_files: int
    blank_lines: int
    file_rows: tuple[int, ...]  # per manifest file, in order
    parquet_key: str
    quarantine_key: str | None
    seconds: float


class CompactStage:
    name = "compact"
    queue = "compact"

    def __init__(self, services: Services, config: CompactConfig | None = None) -> None:
        self.services = services
        self.config = config or load_stage_settings(CompactConfig)
        self.lake = services.settings.name_of(LAKE)
        self.sources = frozenset(self.config.source_buckets or [services.settings.name_of(LANDING)])
        self.store = FilesTable(services.aws.dynamodb, services.settings.name_of(FILES))
        self.finals = Idempotency(services.aws.dynamodb, services.settings.name_of(LEASES))

    def parse(self, body: str) -> CompactJob:
        return parse_body(CompactJob, body)

    async def handle(self, job: CompactJob, ctx: Context) -> None:
        try:
            manifest = await self._manifest(job)
            result = await self.compact(manifest)
        except Fatal as exc:
            await self._finalize_failed(job, ctx, exc)
            raise
        await self._mark(manifest, result)
        await self.services.jobs.record_stage(
            job.manifest_id,
            "compact",
            "COMPACTED",
            queue=ctx.queue,
            rows=result.rows,
            quarantined_lines=result.quarantined,
            missing_files=result.missing_files or None,
            parquet_key=result.parquet_key,
        )
        dims = {"Worker": self.name}
        await self.services.metrics.emit(
            Metric("RowsCompacted", result.rows, "Count", dims),
            Metric("LinesQuarantined", result.quarantined, "Count", dims),
        )
        log.info(
            "manifest compacted",
            extra={
                "manifest_id": manifest.manifest_id,
                "files": result.files,
                "rows": result.rows,
                "columns": result.columns,
                "quarantined": result.quarantined,
                "seconds": round(result.seconds, 3),
            },
        )
        await self._finalize(manifest, result, ctx)

    # --- the manifest ----------------------------------------------------------------------------

    async def _manifest(self, job: CompactJob) -> Manifest:
        try:
            resp = await self.services.aws.s3.get_object(Bucket=self.lake, Key=job.manifest_key)
            async with resp["Body"] as body:
                raw = await body.read()
        except ClientError as exc:
            if error_code(exc) in S3_NO_SUCH_KEY:
                raise Fatal("manifest not found in the lake", code="MANIFEST_NOT_FOUND") from None
            raise
        try:
            manifest = Manifest.model_validate(json.loads(raw))
        except ValidationError as exc:
            # Where and what, never the offending value: it may be a user's key.
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise Fatal(f"manifest is not valid: {where}: {first['msg']}", code="MANIFEST_INVALID") from None
        except (ValueError, RecursionError):
            raise Fatal("manifest is not JSON (or is nested too deeply)", code="MANIFEST_INVALID") from None
        if manifest.manifest_id != job.manifest_id or manifest.date_prefix != job.date_prefix:
            raise Fatal("manifest does not match its job", code="MANIFEST_MISMATCH")
        if any(f.bucket not in self.sources for f in manifest.files):
            raise Fatal("manifest lists a bucket compact may not read", code="MANIFEST_BUCKET")
        return manifest

    # --- the work --------------------------------------------------------------------------------

    async def compact(self, manifest: Manifest) -> Compaction:
        started = time.monotonic()
        cfg = self.config
        with tempfile.TemporaryDirectory(prefix="fleet-compact-") as tmp:
            directory = Path(tmp)
            spools = [
                FileSpool(
                    source=f"s3://{f.bucket}/{f.key}",
                    key=f.key,
                    directory=directory,
                    index=i,
                    max_line_bytes=cfg.max_line_bytes,
                    max_columns=cfg.max_columns,
                )
                for i, f in enumerate(manifest.files)
            ]
            gate = asyncio.Semaphore(cfg.read_concurrency)
            await asyncio.gather(*(self._read(f, spool, gate) for f, spool in zip(manifest.files, spools, strict=True)))
            if not any(s.rows for s in spools):
                # Nothing to write: no empty Parquet file, and the job fails (what was read is quarantined).
                await self._quarantine(spools, directory, manifest)
                missing = sum(1 for s in spools if s.missing)
                raise Fatal(f"no rows to compact: {missing} of {len(spools)} files missing or changed", code="NO_ROWS")
            try:
                schema = unified_schema(spools, cfg.max_columns, manifest.manifest_id)
            except SchemaTooWide as exc:
                raise Fatal(str(exc), code="SCHEMA_TOO_WIDE") from None
            out = directory / "out.parquet"
            written = await asyncio.to_thread(write_parquet, spools, schema, out, batch_rows=cfg.batch_rows)
            out_key = parquet_key(manifest.date_prefix, manifest.manifest_id)
            await upload_file(
                self.services.aws.s3,
                self.lake,
                out_key,
                out,
                content_type="application/vnd.apache.parquet",
                threshold=cfg.multipart_threshold,
            )
            quarantined, q_key = await self._quarantine(spools, directory, manifest)
            return Compaction(
                files=len(spools),
                rows=written.rows,
                columns=written.columns,
                quarantined=quarantined,
                missing_files=sum(1 for s in spools if s.missing),
                blank_lines=sum(s.blank_lines for s in spools),
                file_rows=tuple(s.rows for s in spools),
                parquet_key=out_key,
                quarantine_key=q_key,
                seconds=time.monotonic() - started,
            )

    async def _quarantine(self, spools: list[FileSpool], directory: Path, manifest: Manifest) -> tuple[int, str | None]:
        """Upload the manifest's bad lines (if any): how many, and where."""
        bad = directory / "quarantine.ndjson"
        quarantined = await asyncio.to_thread(concat_quarantine, spools, bad)
        if not quarantined:
            return 0, None
        key = quarantine_key(manifest.manifest_id)
        await upload_file(
            self.services.aws.s3,
            self.lake,
            key,
            bad,
            content_type="application/x-ndjson",
            threshold=self.config.multipart_threshold,
        )
        return quarantined, key

    async def _read(self, file: ManifestFile, spool: FileSpool, gate: asyncio.Semaphore) -> None:
        """Stream one source object through its spool: chunks are read here, parsed in a thread."""
        cfg = self.config
        extra: dict[str, Any] = {"IfMatch": f'"{file.etag}"'} if ETAG_RE.match(file.etag) else {}
        async with gate:
            try:
                resp = await self.services.aws.s3.get_object(Bucket=file.bucket, Key=file.key, **extra)
            except ClientError as exc:
                code = error_code(exc)
                if code in S3_NO_SUCH_KEY:
                    await asyncio.to_thread(spool.mark_missing, "object not found")
                    return
                if code in CHANGED:
                    await asyncio.to_thread(spool.mark_missing, "object changed since it was announced (eTag differs)")
                    return
                raise
            pending: list[bytes] = []
            size = 0
            try:
                async with resp["Body"] as body:
                    while chunk := await body.read(cfg.chunk_bytes):
                        pending.append(chunk)
                        size += len(chunk)
                        if size >= cfg.parse_bytes:
                            await asyncio.to_thread(spool.feed, b"".join(pending))
                            pending, size = [], 0
                if pending:
                    await asyncio.to_thread(spool.feed, b"".join(pending))
            finally:
                await asyncio.to_thread(spool.close)

    # --- bookkeeping -----------------------------------------------------------------------------

    async def _mark(self, manifest: Manifest, result: Compaction) -> None:
        """Files and manifest → compacted, with row counts.

        The files are rewritten whole with BatchWriteItem (25 a call, after one BatchGetItem per 100)
        instead of one conditional update each: a claimed file has exactly one writer left — this
        manifest's compaction — and a rerun writes the same values, so no condition is needed. Items
        not claimed by this manifest (a hand-made job) are left alone.
        """
        now = now_iso()
        rows = {
            file_item_key(f.bucket, f.key, f.etag): n for f, n in zip(manifest.files, result.file_rows, strict=True)
        }
        current = await self.store.get_many([self.store.key(manifest.date_prefix, fk) for fk in rows])
        updated: list[Item] = []
        for item in current:
            if item.get("manifest_id", {}).get("S") != manifest.manifest_id:
                continue
            updated.append(
                {
                    **item,
                    "status": S(COMPACTED),
                    "rows": N(rows[item["file_key"]["S"]]),
                    "compacted_at": S(now),
                }
            )
        await self.store.put_many(updated)
        if len(updated) != len(rows):
            log.warning("files not marked compacted", extra={"not_claimed": len(rows) - len(updated)})
        try:
            await self.services.aws.dynamodb.update_item(
                TableName=self.store.table,
                Key=self.store.key(manifest.date_prefix, manifest_item_key(manifest.manifest_id)),
                UpdateExpression="SET #st = :c, #r = :r, quarantined_lines = :q, parquet_key = :k, "
                "compacted_at = :now REMOVE #t, todo_order",
                ConditionExpression="attribute_exists(file_key)",
                ExpressionAttributeNames={"#st": "state", "#r": "rows", "#t": "todo"},
                ExpressionAttributeValues={
                    ":c": S(MANIFEST_COMPACTED),
                    ":r": N(result.rows),
                    ":q": N(result.quarantined),
                    ":k": S(result.parquet_key),
                    ":now": S(now),
                },
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            log.warning("no manifest record to mark compacted", extra={"manifest_id": manifest.manifest_id})

    async def _owns_job(self, manifest_id: str) -> bool:
        """Compact finalizes the job its input names, the manifest's, and only one ingest made: never the job a
        message's `fleet.job-id` claims, and never a job for a manifest nobody built."""
        job = await self.services.jobs.get(manifest_id)
        return job is not None and job.get("kind") == "manifest"

    async def _finalize(self, manifest: Manifest, result: Compaction, ctx: Context) -> None:
        if not await self._owns_job(manifest.manifest_id):
            log.warning("manifest has no job of its own: not finalized", extra={"manifest_id": manifest.manifest_id})
            return
        lake = f"s3://{self.lake}"
        compact: dict[str, Any] = {
            "status": "PARTIAL" if result.quarantined else "COMPLETED",
            "rows": result.rows,
            "columns": result.columns,
            "quarantined_lines": result.quarantined,
            "missing_files": result.missing_files,
            "output_uri": f"{lake}/{result.parquet_key}",
        }
        if result.quarantine_key:
            compact["quarantine_uri"] = f"{lake}/{result.quarantine_key}"
        event = final_event(
            manifest.manifest_id,
            "COMPLETED",
            {
                "ingest": {
                    "status": "COMPLETED",
                    "files": len(manifest.files),
                    "manifest_uri": f"{lake}/{manifest_key(manifest.date_prefix, manifest.manifest_id)}",
                },
                "compact": compact,
            },
            started_at=manifest.created_at,
            manifest_id=manifest.manifest_id,
            date_prefix=manifest.date_prefix,
        )
        await self._send_once(ctx, event)

    async def _finalize_failed(self, job: CompactJob, ctx: Context, exc: Fatal) -> None:
        if not await self._owns_job(job.manifest_id):
            return
        # Compact is the stage whose output the job is for: its failure fails the job (the manifest alone is
        # not a result), hence it is the only stage reported.
        event = final_event(
            job.manifest_id,
            "FAILED",
            {"compact": {"status": "FAILED"}},
            error={"stage": "compact", "error_code": exc.code, "error_message": exc.reason},
            manifest_id=job.manifest_id,
            date_prefix=job.date_prefix,
        )
        await self._send_once(ctx, event)

    async def _send_once(self, ctx: Context, event: dict[str, Any]) -> None:
        async def send() -> bool:
            await send_final_event(self.services, event)
            return True

        # Keyed by outcome: a compaction that succeeds after a failed one (a redrive once the cause is fixed)
        # is handed to the finalizer too.
        key = f"final#{event['execution_id']}#{event['status']}"
        await self.finals.run(key, send, lease_seconds=ctx.tuning.visibility_timeout)
