"""The `fleet` process as ECS runs it: a real subprocess, real signals, real exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shared.attributes import ORIGIN_ID
from shared.settings import FleetSettings
from shared.stage import Services
from tests.helpers import drain_queue, queue_urls, send


def fleet_env(settings: FleetSettings, **extra: str) -> dict[str, str]:
    assert settings.endpoint_url
    return {
        **os.environ,
        "FLEET_ENDPOINT_URL": settings.endpoint_url,
        "FLEET_PREFIX": settings.prefix,
        "FLEET_HEALTH_DIR": settings.health_dir,
        "FLEET_METRICS_MODE": "off",
        "FLEET_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


async def run_fleet(settings: FleetSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`fleet ARGS...` as a user runs it, against the test's emulator and prefix."""
    return await asyncio.to_thread(
        subprocess.run,
        fleet_cmd(*args),
        env=fleet_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def wait_for_line(lines: list[str], needle: str, timeout: float = 30, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while sum(needle in line for line in lines) < count:
        assert time.monotonic() < deadline, f"{needle!r} never logged: {''.join(lines)[-2000:]}"
        await asyncio.sleep(0.1)


def log_events(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


async def test_sigterm_finishes_or_releases_every_message(fleet: Services, tmp_path: Path) -> None:
    # Given a worker process with 10 messages in flight: 5 quick, 5 that would take a minute
    url, dlq = await queue_urls(fleet)
    bodies = [{"text": f"quick-{i}", "sleep": 1} for i in range(5)] + [
        {"text": f"slow-{i}", "sleep": 60} for i in range(5)
    ]
    env = fleet_env(
        fleet.settings,
        FLEET_DEFAULTS__WAIT_TIME_SECONDS="1",
        FLEET_DEFAULTS__DRAIN_TIMEOUT="3",
        FLEET_DEFAULTS__CONCURRENCY="10",
        FLEET_LOG_SUCCESSES="true",
    )
    proc = subprocess.Popen(fleet_cmd("worker", "echo"), env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        await send(fleet, url, bodies)
        await wait_for_line(lines, "worker started")
        # the quick ones finish at ~1 s; by then every message has been received and the slow ones run
        await wait_for_line(lines, "message succeeded", count=5)

        # When ECS sends SIGTERM
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - started
        reader.join(5)
        stderr = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stderr.close()  # type: ignore[union-attr]

    # Then it exits cleanly within the drain timeout (plus shutdown), not after a minute
    assert proc.returncode == 0, stderr[-2000:]
    assert took < 10
    events = log_events(stderr)
    succeeded = {e["message_id"] for e in events if e["event"] == "message succeeded"}
    released = {e["message_id"] for e in events if e["event"] == "message released"}
    # And every message either finished (and was deleted) or is visible again at once: none lost
    remaining = await drain_queue(fleet, url, wait=0)
    # (a released message is sent again as a copy naming its origin: releases never use up attempts)
    remaining_ids = {m["MessageAttributes"][ORIGIN_ID]["StringValue"] for m in remaining}
    assert len(succeeded) == 5 and released, stderr[-2000:]
    assert released <= remaining_ids  # released ones are back without waiting out the visibility
    assert not succeeded & remaining_ids
    assert len(succeeded) + len(remaining) == 10
    assert sorted(json.loads(m["Body"])["text"] for m in remaining) == [f"slow-{i}" for i in range(5)]
    assert await drain_queue(fleet, dlq, wait=0) == []


async def test_invalid_settings_fail_fast_with_a_clear_message(settings: FleetSettings) -> None:
    # Given a concurrency of zero and a heartbeat slower than the visibility timeout
    env = fleet_env(
        settings,
        FLEET_DEFAULTS__CONCURRENCY="0",
        FLEET_WORKERS__ECHO__HEARTBEAT_INTERVAL="60",
    )

    # When a worker starts
    started = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run, fleet_cmd("worker", "echo"), env=env, capture_output=True, text=True, timeout=60
    )

    # Then it refuses at once, naming each bad setting
    assert result.returncode == 2
    assert time.monotonic() - started < 15
    assert "invalid configuration" in result.stderr
    assert "FLEET_DEFAULTS__CONCURRENCY" in result.stderr
    assert "heartbeat_interval" in result.stderr


async def test_health_check_follows_the_worker_lifecycle(fleet: Services) -> None:
    # Given a running worker process
    env = fleet_env(fleet.settings, FLEET_DEFAULTS__WAIT_TIME_SECONDS="1")
    health = fleet_cmd("health", "echo")
    before = await asyncio.to_thread(subprocess.run, health, env=env, capture_output=True, text=True)
    proc = subprocess.Popen(fleet_cmd("worker", "echo"), env=env, stderr=subprocess.DEVNULL)
    try:
        # When the health check runs while it works
        ok = None
        for _ in range(50):
            ok = await asyncio.to_thread(subprocess.run, health, env=env, capture_output=True, text=True)
            if ok.returncode == 0:
                break
            await asyncio.sleep(0.2)
        # Then it is healthy while running, and was not before it started
        assert before.returncode == 1
        assert ok is not None and ok.returncode == 0, ok.stdout
        assert "healthy" in ok.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    # And unhealthy once it has stopped
    after = await asyncio.to_thread(subprocess.run, health, env=env, capture_output=True, text=True)
    assert after.returncode == 1 and "stopped" in after.stdout


async def test_up_embedded_runs_the_fleet_until_ctrl_c(settings: FleetSettings) -> None:
    # Given no endpoint at all: `fleet up --embedded` must bring its own emulator
    env = {k: v for k, v in fleet_env(settings).items() if k != "FLEET_ENDPOINT_URL"}
    proc = subprocess.Popen(
        fleet_cmd("up", "--embedded", "--workers", "echo"), env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        # When it reports the fleet is up
        seen = []
        for _ in range(40):
            line = await asyncio.to_thread(proc.stdout.readline)
            seen.append(line)
            if "fleet up" in line:
                break
        assert any("embedded AWS emulator" in line for line in seen), seen
        assert any("fleet up" in line for line in seen), seen
        # And the user presses Ctrl-C
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # Then it stops cleanly
    assert code == 0
