"""Start the provider server as a real subprocess and drive its control API (tests, the demo, benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from types import TracebackType
from typing import Any, Self

from shared.emulator import stop_process


class ProviderProcess:
    """`with ProviderProcess() as provider: provider.url; provider.reset(library=[...])`."""

    def __init__(self, *args: str, nice: int = 0) -> None:
        self.args = args
        self.nice = nice
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        cmd = [sys.executable, "-m", "workers.media_sync.provider", "--port", "0", *self.args]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("media provider did not start")
        self.url = json.loads(line)["url"]
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def control(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_control/{action}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def reset(self, **state: Any) -> None:
        self.control("reset", state)

    def knobs(self, **changes: Any) -> None:
        self.control("knobs", changes)

    def stats(self) -> dict[str, Any]:
        return self.control("stats")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
