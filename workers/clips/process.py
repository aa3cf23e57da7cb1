"""Run ffmpeg (or ffprobe) as an asyncio subprocess: an argument list, never a shell; no stdin; a total
timeout and a stall timeout fed by `-progress`; stdout streamed to a sink; the tail of stderr kept for
the error. A cancelled run (SIGTERM drain, handler timeout) kills the process before it returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

CHUNK = 256 * 1024
STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class Progress:
    """One `-progress` block: how far the output has got, in seconds of output time."""

    out_seconds: float
    speed: str
    done: bool


class FfmpegError(Exception):
    def __init__(self, returncode: int | None, stderr_tail: str, *, reason: str = "") -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.reason = reason or f"exit code {returncode}"
        super().__init__(f"ffmpeg failed ({self.reason}): {stderr_tail or 'no output on stderr'}")


class FfmpegTimeout(FfmpegError):
    pass


Sink = Callable[[bytes], Awaitable[None]]
OnProgress = Callable[[Progress], Awaitable[None]]


async def run(
    args: Sequence[str],
    *,
    time_limit: float,
    stall_timeout: float | None = None,
    stdout: Sink | None = None,
    on_progress: OnProgress | None = None,
    progress_fd_placeholder: str = "{progress}",
) -> bytes:
    """Run `args`; return stdout when no sink is given. Raises `FfmpegError`/`FfmpegTimeout`.

    With `on_progress`, an argument equal to `progress_fd_placeholder` is replaced by `pipe:N`, a pipe
    the process writes its `-progress` blocks to (stdout stays free for the media). Without progress
    blocks for `stall_timeout` seconds the process counts as stuck and is killed.
    """
    argv = list(args)
    pass_fds: tuple[int, ...] = ()
    progress_read = progress_write = -1
    if on_progress is not None:
        progress_read, progress_write = os.pipe()
        argv = [f"pipe:{progress_write}" if a == progress_fd_placeholder else a for a in argv]
        pass_fds = (progress_write,)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=pass_fds,
        )
    finally:
        if progress_write >= 0:
            os.close(progress_write)  # the child holds its own copy
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    collected = bytearray()
    last_progress = time.monotonic()

    async def read_stdout() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(CHUNK):
            if stdout is None:
                collected.extend(chunk)
            else:
                await stdout(chunk)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                tail.append(text)

    progress_file = os.fdopen(progress_read, "rb", buffering=0) if progress_read >= 0 else None

    async def read_progress() -> None:
        nonlocal last_progress
        assert on_progress is not None and progress_file is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), progress_file)
        block: dict[str, str] = {}
        try:
            async for raw in reader:
                key, _, value = raw.decode("ascii", "replace").strip().partition("=")
                block[key] = value
                if key == "progress":
                    last_progress = time.monotonic()
                    await on_progress(_progress(block))
                    block = {}
        finally:
            transport.close()

    readers = [asyncio.create_task(read_stdout()), asyncio.create_task(read_stderr())]
    if on_progress is not None:
        readers.append(asyncio.create_task(read_progress()))
    all_read = asyncio.gather(*readers)
    started = time.monotonic()
    failure: FfmpegError | None = None
    try:
        while not all_read.done():
            await asyncio.wait({all_read}, timeout=1.0)
            now = time.monotonic()
            if now - started > time_limit:
                failure = FfmpegTimeout(None, "", reason=f"timed out after {time_limit:g}s")
            elif stall_timeout is not None and now - last_progress > stall_timeout:
                failure = FfmpegTimeout(None, "", reason=f"no progress for {stall_timeout:g}s")
            if failure is not None:
                break
        if failure is None:
            all_read.result()  # a sink's exception surfaces here
        returncode = await proc.wait() if failure is None else None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        all_read.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if progress_file is not None:
            progress_file.close()
    stderr_tail = "\n".join(tail)
    if failure is not None:
        raise type(failure)(None, stderr_tail, reason=failure.reason)
    if returncode != 0:
        raise FfmpegError(returncode, stderr_tail)
    return bytes(collected)


def _progress(block: dict[str, str]) -> Progress:
    micros = block.get("out_time_us") or block.get("out_time_ms") or "0"  # both are microseconds
    try:
        seconds = max(0.0, int(micros) / 1_000_000)
    except ValueError:  # "N/A" before the first frame
        seconds = 0.0
    return Progress(out_seconds=seconds, speed=block.get("speed", ""), done=block.get("progress") == "end")
