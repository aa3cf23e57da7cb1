"""HTTP bytes → S3 parts, with memory bounded by part size × parts in flight.

The reader fills one part buffer at a time from the response; a full part is digested (SHA-256 of the
whole stream, in order, and its own CRC32C) and handed to an upload task, and the reader moves on to the
next part while earlier ones upload. A semaphore of `parts_in_flight` permits is taken before a buffer is
allocated and given back when its upload ends: that is the whole memory bound, and the backpressure that
keeps a fast provider from outrunning S3. A dropped connection is resumed in-process with a `Range`
request from the exact byte reached (the part being filled is still in memory), guarded by `If-Range`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from shared.errors import Transient
from workers.media_sync.s3target import Part, crc32c_b64

log = logging.getLogger("fleet.media_sync")

READ_CHUNK = 1024 * 1024

Reopen = Callable[[int], Awaitable[httpx.Response]]  # position -> a response starting there
Upload = Callable[[int, bytearray, str], Awaitable[Part]]


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def map_part_buffers(threshold: int = 1024 * 1024) -> bool:
    """Make glibc map every part buffer with mmap and unmap it when freed.

    Left alone, glibc raises its mmap threshold to the size of the first large block freed (up to 32 MiB),
    after which 16 MiB part buffers come from the heap, where fragmentation keeps freed memory in the
    process: RSS then drifts with the transfer's length. A fixed threshold keeps it at the buffers alive."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune


class StreamTooLong(Exception):
    """The provider sent more bytes than it declared."""


@dataclass
class Progress:
    """What a transfer has done so far (read by logs, metrics and the lease renewal)."""

    received: int = 0  # bytes read from the provider in this attempt
    waited_for_slots: float = 0.0  # seconds the reader waited for an upload to finish (S3 slower than the source)
    uploaded: int = 0
    resumes: int = 0
    first_byte_at: float | None = None
    last_byte_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class PartPipeline:
    def __init__(
        self,
        *,
        total: int,
        part_size: int,
        parts_in_flight: int,
        upload: Upload,
        digest: hashlib._Hash | None,
        first_part: int = 1,
        max_resumes: int = 3,
        resume_delay: float = 0.5,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.total = total
        self.part_size = part_size
        self.upload = upload
        self.digest = digest
        self.next_part = first_part
        self.max_resumes = max_resumes
        self.resume_delay = resume_delay
        self.check = check
        self.parts: dict[int, Part] = {}
        self.progress = Progress()
        self._slots = asyncio.Semaphore(parts_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    @property
    def part_count(self) -> int:
        return max(1, -(-self.total // self.part_size))

    def offset_of(self, number: int) -> int:
        return (number - 1) * self.part_size

    def size_of(self, number: int) -> int:
        return min(self.part_size, self.total - self.offset_of(number))

    async def run(self, response: httpx.Response, reopen: Reopen) -> dict[int, Part]:
        """Read every remaining part from `response` (reopening after drops) and upload them all."""
        try:
            await self._read_all(response, reopen)
            await self._drain()
        except BaseException:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise
        return self.parts

    async def _read_all(self, response: httpx.Response, reopen: Reopen) -> None:
        number = self.next_part
        if number > self.part_count:
            return
        await self._slots.acquire()
        if self.total == 0:
            await self._launch(1, bytearray())
            return
        buf = bytearray(self.size_of(number))
        filled = 0
        position = self.offset_of(number)
        while True:
            try:
                async for chunk in response.aiter_raw(READ_CHUNK):
                    if self.progress.first_byte_at is None:
                        self.progress.first_byte_at = time.monotonic()
                    self.progress.received += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        if number > self.part_count:
                            raise StreamTooLong(f"the provider sent more than the {self.total} bytes it declared")
                        take = min(len(view), len(buf) - filled)
                        buf[filled : filled + take] = view[:take]
                        filled += take
                        position += take
                        view = view[take:]
                        if filled == len(buf):
                            await self._launch(number, buf)
                            number += 1
                            if number > self.part_count:
                                buf, filled = bytearray(), 0
                                continue
                            await self._acquire()
                            buf, filled = bytearray(self.size_of(number)), 0
                if position >= self.total:
                    self.progress.last_byte_at = time.monotonic()
                    return
                raise httpx.RemoteProtocolError(f"stream ended at byte {position} of {self.total}")
            except (httpx.TransportError, httpx.DecodingError) as exc:
                await response.aclose()
                self.progress.resumes += 1
                if self.progress.resumes > self.max_resumes:
                    raise Transient(
                        f"download dropped {self.progress.resumes} times (last at byte {position}: "
                        f"{type(exc).__name__})",
                        code="STREAM_DROPPED",
                    ) from None
                log.warning(
                    "download dropped; resuming with Range",
                    extra={"at_byte": position, "error": type(exc).__name__, "resume": self.progress.resumes},
                )
                await asyncio.sleep(self.resume_delay * self.progress.resumes)
                response = await reopen(position)

    async def _acquire(self) -> None:
        if self._slots.locked():
            t0 = time.monotonic()
            await self._slots.acquire()
            self.progress.waited_for_slots += time.monotonic() - t0
        else:
            await self._slots.acquire()

    async def _launch(self, number: int, buf: bytearray) -> None:
        if self._error is not None:
            raise self._error
        self.check()
        crc = await asyncio.to_thread(self._digest_part, buf)
        self.next_part = number + 1
        task = asyncio.create_task(self._upload(number, buf, crc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _digest_part(self, buf: bytearray) -> str:
        # In a thread: hashlib and awscrt release the GIL on large buffers, so reading goes on meanwhile.
        if self.digest is not None:
            self.digest.update(buf)
        return crc32c_b64(buf)

    async def _upload(self, number: int, buf: bytearray, crc: str) -> None:
        try:
            self.parts[number] = await self.upload(number, buf, crc)
            self.progress.uploaded += len(buf)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._slots.release()

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        if self._error is not None:
            raise self._error
