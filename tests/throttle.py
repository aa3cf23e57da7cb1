"""A loopback TCP proxy that limits the bytes per second it passes from the server to the client, and
counts them: a stand-in for a real link to S3 (the emulator on loopback answers at memory speed).

    with ThrottleProxy("http://127.0.0.1:PORT", bytes_per_second=50e6) as proxy:
        ... clients with endpoint_url=proxy.url ...
        proxy.downstream_bytes  # what the server sent through it

It runs its own event loop in a thread, so a test or benchmark can use it from sync or async code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Self
from urllib.parse import urlparse

CHUNK = 64 * 1024


class ThrottleProxy:
    def __init__(self, upstream: str, *, bytes_per_second: float) -> None:
        parsed = urlparse(upstream)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.rate = bytes_per_second
        self.downstream_bytes = 0
        self.upstream_bytes = 0
        self.url = ""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="throttle-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        # One token bucket for the whole link: concurrent connections share the bandwidth.
        self._allowance = 0.0
        self._last = time.monotonic()

    def reset(self) -> None:
        with self._lock:
            self.downstream_bytes = self.upstream_bytes = 0

    async def _take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self._allowance = min(self.rate / 10, self._allowance + (now - self._last) * self.rate)
            self._last = now
            if self._allowance >= n or self._allowance >= self.rate / 10:
                self._allowance -= n
                return
            await asyncio.sleep((n - self._allowance) / self.rate)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while data := await src.read(CHUNK):
                    if downstream:
                        await self._take(len(data))
                    dst.write(data)
                    await dst.drain()
                    with self._lock:
                        if downstream:
                            self.downstream_bytes += len(data)
                        else:
                            self.upstream_bytes += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        except asyncio.CancelledError:
            # The proxy is stopping. Ending normally (not cancelled) keeps asyncio's stream callback quiet.
            writer.close()
            up_writer.close()

    async def _start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
