"""A loopback TCP proxy that adds a fixed delay to every request, standing in for the network.

moto answers on loopback in about a millisecond; SQS in a region answers in several. A consumer's
design (batching, pipelining, concurrency) matters exactly because of that round trip, so the consumer
benchmark reports figures both without and with it. Runs as its own process (so its work is not the
consumer's): `python bench/latency.py TARGET_URL DELAY_MS` prints its URL on stdout, then serves.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from urllib.parse import urlparse

from shared.emulator import stop_process


async def serve(target_url: str, delay_ms: float) -> None:
    parsed = urlparse(target_url)
    host, port, delay = parsed.hostname or "127.0.0.1", parsed.port or 80, delay_ms / 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        awaiting_request = True  # the first bytes after a response start a new request

        async def upstream() -> None:
            nonlocal awaiting_request
            try:
                while data := await reader.read(65536):
                    if awaiting_request:
                        awaiting_request = False
                        await asyncio.sleep(delay)
                    up_writer.write(data)
                    await up_writer.drain()
            except ConnectionError:
                pass
            finally:
                up_writer.close()

        async def downstream() -> None:
            nonlocal awaiting_request
            try:
                while data := await up_reader.read(65536):
                    awaiting_request = True
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        await asyncio.gather(upstream(), downstream())

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class LatencyProxy:
    """`with LatencyProxy(url, 10) as proxy: proxy.url` — the proxy as a subprocess."""

    def __init__(self, target_url: str, delay_ms: float) -> None:
        self._args = [sys.executable, __file__, target_url, str(delay_ms)]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> LatencyProxy:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        stop_process(self._proc)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], float(sys.argv[2])))
