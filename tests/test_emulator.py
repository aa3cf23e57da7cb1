"""The embedded emulator and the fallback to it."""

from __future__ import annotations

import time
import urllib.request

import pytest

from shared.emulator import EmbeddedAws
from tests import conftest


def test_without_a_docker_engine_localstack_falls_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given LocalStack is asked for, on a machine whose Docker engine is absent (or unreachable)
    monkeypatch.setenv("FLEET_TEST_LOCALSTACK", "1")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    # When the fixture tries it
    started = time.monotonic()
    result = conftest._localstack()
    # Then it gives up quickly, leaving the tests to moto
    assert result is None
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_embedded_emulator_serves_and_resets(mode: str) -> None:
    # Given an embedded emulator in either mode
    with EmbeddedAws(mode=mode) as emulator:
        # When it is asked for its API root, Then it answers over HTTP on loopback
        with urllib.request.urlopen(f"{emulator.url}/moto-api/", timeout=5) as resp:
            assert resp.status == 200
        assert emulator.url.startswith("http://127.0.0.1:")
        emulator.reset()
    # And once stopped it no longer answers
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{emulator.url}/moto-api/", timeout=2)
