"""`download` (`fleet-download`): one media item from the provider into `s3://fleet-media/videos/<id>/<name>`.

1. Skip it when the object already exists with matching source metadata (`source-id`, `source-size`).
2. Take the item in `fleet-sync`: IN_PROGRESS under a lease that lasts as long as the message's visibility
   and is renewed with it, so a duplicate job waits and a crashed worker's lease runs out with its message.
3. Stream: below the multipart threshold one PUT, else a multipart upload recorded in `fleet-sync` the
   moment it exists; parts upload while the next part downloads (workers/media_sync/stream.py).
4. Resume: an upload recorded by an earlier attempt is listed (`list_parts`) and the download continues
   with `Range` from the first missing part, guarded by `If-Range` and a check of ETag and size: if the
   source changed, the old upload is aborted and the transfer starts over.
5. Verify the byte count against the provider's size; record SHA-256 (tag `sha256`, and `fleet-sync`).
6. COMPLETED; or DELETED on 404; or, on a failure that will not be retried (a `Fatal` error, or the last
   attempt), abort the upload and mark FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import Fatal, FleetError, Retry, classify
from shared.stage import Context, Services, parse_body
from workers.media_sync import metrics
from workers.media_sync.app import MediaSync
from workers.media_sync.client import NotFoundAtSource, ProviderClient, SourceChanged
from workers.media_sync.models import DownloadJob, object_key
from workers.media_sync.s3target import Part
from workers.media_sync.stream import PartPipeline, Progress, StreamTooLong, map_part_buffers

log = logging.getLogger("fleet.media_sync")


class LeaseLost(Retry):
    code = "LEASE_LOST"


@dataclass(frozen=True)
class Source:
    """What the provider says about the bytes it is sending."""

    status: int
    start: int
    size: int
    etag: str | None
    modified: str | None
    content_type: str | None

    @classmethod
    def of(cls, response: httpx.Response) -> Source:
        headers = response.headers
        etag = headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None
        try:
            if response.status_code == 206:
                spec = headers["Content-Range"].removeprefix("bytes ").strip()
                span, _, total = spec.partition("/")
                start = int(span.split("-", 1)[0])
                size = int(total)
            else:
                start, size = 0, int(headers["Content-Length"])
        except (KeyError, ValueError):
            raise Fatal("the provider sent no usable Content-Length/Content-Range", code="PROVIDER_NO_SIZE") from None
        if size < 0 or start < 0:
            raise Fatal("the provider sent a negative size", code="PROVIDER_NO_SIZE")
        return cls(response.status_code, start, size, strong, headers.get("Last-Modified"), headers.get("Content-Type"))

    @property
    def validator(self) -> str | None:
        return self.etag or self.modified


@dataclass
class Resume:
    upload_id: str
    part_size: int
    size: int
    etag: str | None
    modified: str | None
    parts: dict[int, Part]

    @property
    def first_missing(self) -> int:
        n = 1
        while n in self.parts:
            n += 1
        return n

    @property
    def offset(self) -> int:
        return (self.first_missing - 1) * self.part_size


@dataclass
class Outcome:
    size: int
    progress: Progress
    sha256: str
    resumed_from: int
    seconds: float
    first_byte_seconds: float | None


class DownloadStage:
    name = "download"

    def __init__(self, services: Services, media: MediaSync | None = None) -> None:
        self.services = services
        self.media = media or MediaSync.of(services)
        self.config = self.media.config
        self.store = self.media.store
        self.target = self.media.target
        map_part_buffers()

    def parse(self, body: str) -> DownloadJob:
        return parse_body(DownloadJob, body)

    # --- one message -------------------------------------------------------------------------------

    async def handle(self, job: DownloadJob, ctx: Context) -> None:
        env = self.services.settings.environment
        key = object_key(self.config.key_prefix, job.media_id, job.filename)
        if await self._already_synced(job, key):
            return
        owner = f"{ctx.message.id}#{ctx.attempt}#{uuid.uuid4().hex[:8]}"
        lease = float(ctx.tuning.visibility_timeout)
        if not await self.store.claim(job.media_id, owner, lease, s3_key=key, filename=job.filename):
            item = await self.store.get(job.media_id) or {}
            wait = max(1.0, float(item.get("lease_until", 0)) - time.time())
            raise Retry(f"{job.media_id} is being transferred by another worker", delay=wait, code="IN_PROGRESS")
        lost, done = asyncio.Event(), asyncio.Event()
        renewer = asyncio.create_task(self._renew(job.media_id, owner, lease, ctx.tuning.heartbeat_seconds, lost, done))

        async def stop_renewing() -> None:
            # Before any write that settles the lease: a renewal still on its way would push a lease handed
            # back (lease_until=0) out again, and the retry would wait for "another worker".
            done.set()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

        try:
            outcome = await self._transfer(job, key, owner, lost)
        except NotFoundAtSource:
            await stop_renewing()
            await self._abandon_upload(job.media_id)
            await self.store.finish(job.media_id, owner, "DELETED", error="deleted at source (404)", bytes=0)
            log.info("media deleted at source", extra={"media_id": job.media_id})
            return
        except asyncio.CancelledError:
            renewer.cancel()
            raise  # shutdown: the upload stays recorded, the next attempt resumes it
        except Exception as exc:
            error = classify(exc)
            await stop_renewing()
            if isinstance(error, LeaseLost):
                raise error from exc  # the upload belongs to the worker that took over: leave it alone
            await self._failed(
                job, owner, error, final=not isinstance(error, Retry) or ctx.attempt >= ctx.tuning.max_attempts
            )
            raise error from exc
        await stop_renewing()
        await self.store.finish(
            job.media_id, owner, "COMPLETED", bytes=outcome.size, size=outcome.size, sha256=outcome.sha256, s3_key=key
        )
        await self.services.metrics.emit(
            *metrics.synced(
                env, size=outcome.size, seconds=outcome.seconds, first_byte_seconds=outcome.first_byte_seconds
            )
        )
        log.info(
            "media synced",
            extra={
                "media_id": job.media_id,
                "key": key,
                "bytes": outcome.size,
                "sha256": outcome.sha256,
                "resumed_from": outcome.resumed_from,
                "seconds": round(outcome.seconds, 2),
                "waited_for_s3_s": round(outcome.progress.waited_for_slots, 2),
                "download_s": round((outcome.progress.last_byte_at or 0) - outcome.progress.started_at, 2),
            },
        )

    async def _already_synced(self, job: DownloadJob, key: str) -> bool:
        """Idempotency through the object's metadata (the seed's check), completed in `fleet-sync` if needed."""
        head = await self.target.head(key)
        if head is None:
            return False
        meta = head["metadata"]
        if meta.get("source-id") != job.media_id or (job.size is not None and meta.get("source-size") != str(job.size)):
            return False
        item = await self.store.get(job.media_id) or {}
        if item.get("status") == "COMPLETED" and item.get("s3_key") == key and item.get("sha256"):
            log.info("already synced: skipped", extra={"media_id": job.media_id, "key": key})
            return True
        # The object is there but its record is not final (a crash between complete and the record).
        sha = meta.get("sha256") or await self.target.tagged_sha256(key)
        if not sha:
            sha, _ = await self.target.read_back_sha256(key)
        owner = f"skip#{uuid.uuid4().hex[:8]}"
        if not await self.store.claim(job.media_id, owner, 60.0, s3_key=key, filename=job.filename):
            return False  # someone is transferring it right now: let the normal path wait for them
        await self._abandon_upload(job.media_id)
        await self.store.finish(job.media_id, owner, "COMPLETED", bytes=head["size"], size=head["size"], sha256=sha)
        log.info("already in S3: record completed", extra={"media_id": job.media_id, "key": key})
        return True

    async def _renew(
        self, media_id: str, owner: str, lease: float, every: float, lost: asyncio.Event, done: asyncio.Event
    ) -> None:
        """Renew every `every` seconds until `done`; a renewal under way when `done` is set still finishes, so
        whoever waits for this task knows no renewal can land after it."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
            if done.is_set():
                return
            try:
                if not await self.store.renew(media_id, owner, lease):
                    log.warning("transfer lease lost to another worker", extra={"media_id": media_id})
                    lost.set()
                    return
            except Exception as exc:
                log.warning("transfer lease not renewed", extra={"error": str(exc)[:200]})

    async def _failed(self, job: DownloadJob, owner: str, error: FleetError, *, final: bool) -> None:
        if final:
            await self._abandon_upload(job.media_id)
            await self.store.finish(job.media_id, owner, "FAILED", error=error.reason[:1000])
            await self.services.metrics.emit(*metrics.failed(self.services.settings.environment, error.code))
            log.error("media sync failed", extra={"media_id": job.media_id, "error": error.reason, "code": error.code})
        else:
            # Keep the upload for the retry to resume; let the retry take the lease at once.
            await self.store.update(job.media_id, owner, error=error.reason[:1000], lease_until=0)

    async def _abandon_upload(self, media_id: str) -> None:
        """Abort the upload recorded for this media, so no orphaned parts remain."""
        item = await self.store.get(media_id) or {}
        if item.get("upload_id") and item.get("upload_key"):
            await self.target.abort(str(item["upload_key"]), str(item["upload_id"]))

    # --- the transfer ------------------------------------------------------------------------------

    async def _resumable(self, media_id: str, key: str) -> Resume | None:
        item = await self.store.get(media_id) or {}
        upload_id, upload_key = item.get("upload_id"), item.get("upload_key")
        if not upload_id or not upload_key:
            return None
        if upload_key != key or not (item.get("source_etag") or item.get("source_modified")):
            await self.target.abort(str(upload_key), str(upload_id))  # a different name, or unverifiable
            return None
        parts = await self.target.parts(key, str(upload_id))
        if parts is None:
            return None
        part_size, size = int(item["part_size"]), int(item.get("size", -1))
        # Only parts of the size their position requires count; anything else is re-sent.
        expected = {n: min(part_size, size - (n - 1) * part_size) for n in parts}
        kept = {n: p for n, p in parts.items() if p.size == expected[n] and expected[n] > 0}
        return Resume(str(upload_id), part_size, size, item.get("source_etag"), item.get("source_modified"), kept)

    async def _transfer(self, job: DownloadJob, key: str, owner: str, lost: asyncio.Event) -> Outcome:
        resume = await self._resumable(job.media_id, key)
        async with self.media.provider() as provider:
            try:
                return await self._stream(job, key, owner, lost, provider, resume)
            except SourceChanged as exc:
                # Once: a source that keeps changing fails this attempt (and is retried later).
                log.warning("source changed since the upload began: starting over", extra={"reason": str(exc)})
                await self._abandon_upload(job.media_id)
                await self.store.update(job.media_id, owner, remove=("upload_id", "upload_key"))
                return await self._stream(job, key, owner, lost, provider, None)

    async def _stream(
        self,
        job: DownloadJob,
        key: str,
        owner: str,
        lost: asyncio.Event,
        provider: ProviderClient,
        resume: Resume | None,
    ) -> Outcome:
        started = time.monotonic()
        url = provider.download_url(job.media_id, job.download_url)
        start = resume.offset if resume else 0
        response = await provider.open_download(
            url, _range_headers(start, resume.etag or resume.modified if resume else None)
        )
        try:
            source = Source.of(response)
            if resume is not None:
                _same_source(source, resume, start)
            elif source.status == 206:
                raise Fatal("the provider answered a full download with a partial one", code="PROVIDER_RANGE")
            size = source.size
            if size > self.config.max_object_bytes:
                raise Fatal(f"{size} bytes is over the {self.config.max_object_bytes}-byte limit", code="TOO_LARGE")
            if job.size is not None and job.size != size and resume is None:
                log.warning(
                    "size differs from the listing: the provider's response wins",
                    extra={"media_id": job.media_id, "listed": job.size, "served": size},
                )

            async def reopen(position: int) -> httpx.Response:
                again = await provider.open_download(url, _range_headers(position, source.validator))
                moved = Source.of(again)
                if (
                    moved.status != 206
                    or moved.start != position
                    or moved.size != size
                    or (source.etag and moved.etag != source.etag)
                ):
                    await again.aclose()
                    raise SourceChanged(f"the source changed while downloading (at byte {position})")
                return again

            def check() -> None:
                if lost.is_set():
                    raise LeaseLost("another worker took over this transfer")

            metadata = {"source-id": job.media_id, "source-size": str(size)}
            if source.etag:
                metadata["source-etag"] = source.etag.strip('"')[:128]
            if resume is None and size < self.config.multipart_threshold:
                return await self._single(key, size, metadata, source, response, reopen, check, started)
            return await self._multipart(
                job, key, owner, size, metadata, source, resume, response, reopen, check, started
            )
        finally:
            await response.aclose()

    async def _single(
        self,
        key: str,
        size: int,
        metadata: dict[str, str],
        source: Source,
        response: httpx.Response,
        reopen: Any,
        check: Any,
        started: float,
    ) -> Outcome:
        digest = hashlib.sha256()

        async def put(_: int, body: bytearray, crc: str) -> Part:
            sha = digest.hexdigest()
            await self.target.put(key, body, {**metadata, "sha256": sha}, source.content_type)
            await self.target.tag(key, sha)
            return Part(1, "", len(body), crc)

        pipeline = PartPipeline(
            total=size,
            part_size=max(size, 1),
            parts_in_flight=1,
            upload=put,
            digest=digest,
            max_resumes=self.config.stream_resumes,
            check=check,
        )
        await _run(pipeline, response, reopen)
        return Outcome(
            size,
            pipeline.progress,
            digest.hexdigest(),
            0,
            time.monotonic() - started,
            _ttfb(pipeline, started),
        )

    async def _multipart(
        self,
        job: DownloadJob,
        key: str,
        owner: str,
        size: int,
        metadata: dict[str, str],
        source: Source,
        resume: Resume | None,
        response: httpx.Response,
        reopen: Any,
        check: Any,
        started: float,
    ) -> Outcome:
        if resume is None:
            part_size = self.config.part_size
            upload_id = await self.target.create(key, metadata, source.content_type)
            recorded = await self.store.update(
                job.media_id,
                owner,
                upload_id=upload_id,
                upload_key=key,
                part_size=part_size,
                size=size,
                source_etag=source.etag or "",
                source_modified=source.modified or "",
            )
            if not recorded:
                await self.target.abort(key, upload_id)
                raise LeaseLost("another worker took over this transfer")
            done: dict[int, Part] = {}
            first = 1
        else:
            upload_id, part_size, done, first = (
                resume.upload_id,
                resume.part_size,
                dict(resume.parts),
                resume.first_missing,
            )
            log.info(
                "resuming upload", extra={"media_id": job.media_id, "from_part": first, "from_byte": resume.offset}
            )
        # A SHA-256 cannot be carried across processes: a resumed transfer reads the object back instead.
        digest = hashlib.sha256() if first == 1 else None

        async def upload(number: int, body: bytearray, crc: str) -> Part:
            return await self.target.upload_part(key, upload_id, number, body, crc)

        pipeline = PartPipeline(
            total=size,
            part_size=part_size,
            parts_in_flight=self.config.parts_in_flight,
            upload=upload,
            digest=digest,
            first_part=first,
            max_resumes=self.config.stream_resumes,
            check=check,
        )
        parts = {**done, **await _run(pipeline, response, reopen)}
        count = pipeline.part_count
        if sorted(parts) != list(range(1, count + 1)) or sum(p.size for p in parts.values()) != size:
            raise Fatal(f"parts do not add up to {size} bytes", code="BYTE_COUNT")
        check()
        await self.target.complete(key, upload_id, list(parts.values()))
        if digest is not None:
            sha = digest.hexdigest()
        else:
            sha, stored = await self.target.read_back_sha256(key)
            if stored != size:
                raise Fatal(f"stored object has {stored} bytes, the provider declared {size}", code="BYTE_COUNT")
        await self.target.tag(key, sha)
        return Outcome(
            size,
            pipeline.progress,
            sha,
            (first - 1) * part_size,
            time.monotonic() - started,
            _ttfb(pipeline, started),
        )


async def _run(pipeline: PartPipeline, response: httpx.Response, reopen: Any) -> dict[int, Part]:
    try:
        return await pipeline.run(response, reopen)
    except StreamTooLong as exc:
        raise Fatal(str(exc), code="BYTE_COUNT") from None


def _ttfb(pipeline: PartPipeline, started: float) -> float | None:
    first = pipeline.progress.first_byte_at
    return first - started if first is not None else None


def _range_headers(start: int, validator: str | None) -> dict[str, str]:
    if start <= 0:
        return {}
    headers = {"Range": f"bytes={start}-"}
    if validator:
        headers["If-Range"] = validator
    return headers


def _same_source(source: Source, resume: Resume, start: int) -> None:
    """A resumed range must come from the very object the upload began with."""
    if start == 0:
        if source.size != resume.size or (resume.etag and source.etag != resume.etag):
            raise SourceChanged("size or ETag differ from the upload's source")
        return
    if source.status != 206:
        raise SourceChanged("If-Range did not match: the provider sent the whole (new) object")
    if source.start != start or source.size != resume.size:
        raise SourceChanged(f"range starts at {source.start} of {source.size}, expected {start} of {resume.size}")
    if resume.etag and source.etag != resume.etag:
        raise SourceChanged("ETag differs from the upload's source")
