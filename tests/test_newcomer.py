"""The `fleet` command as a newcomer drives it: the README's walkthrough, and the mistakes people make."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from shared.emulator import free_port
from shared.settings import FleetSettings
from shared.stage import Services
from tests.helpers import drain_queue, queue_urls, send
from tests.test_process import fleet_cmd, fleet_env, run_fleet


def without_endpoint(settings_env: dict[str, str], **extra: str) -> dict[str, str]:
    """A shell in which nobody set FLEET_ENDPOINT_URL (as a newcomer's second terminal)."""
    env = {k: v for k, v in settings_env.items() if k not in ("FLEET_ENDPOINT_URL", "AWS_ENDPOINT_URL")}
    return {**env, **extra}


async def run_in(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, fleet_cmd(*args), env=env, capture_output=True, text=True, timeout=120
    )


async def test_the_embedded_fleet_is_found_from_another_shell(settings: FleetSettings, tmp_path: Path) -> None:
    # Given `fleet up --embedded` running in one terminal (its state file in a private directory)
    state = tmp_path / "state"
    env = without_endpoint(
        fleet_env(settings),
        FLEET_STATE_DIR=str(state),
        FLEET_EMBEDDED_PORT=str(free_port()),
        FLEET_DEFAULTS__WAIT_TIME_SECONDS="1",
    )
    up = subprocess.Popen(
        fleet_cmd("up", "--embedded", "--workers", "echo"), env=env, stdout=subprocess.PIPE, text=True
    )
    assert up.stdout is not None
    try:
        for _ in range(60):
            line = await asyncio.to_thread(up.stdout.readline)
            if "fleet up" in line:
                break
        assert (state / "embedded.json").exists()

        # When, in another terminal with no endpoint set, a job is submitted and waited for
        submitted = await run_in(env, "submit", "echo", "hello", "--wait")

        # Then it went to the embedded fleet, said so, and ended with the job's success
        assert submitted.returncode == 0, submitted.stderr
        assert "using the embedded fleet at http://127.0.0.1:" in submitted.stderr
        job_id = submitted.stdout.splitlines()[0].strip()
        assert uuid.UUID(job_id) and "SUCCEEDED" in submitted.stdout

        # And `fleet status` finds the job by the 8 characters the CLI prints elsewhere
        status = await run_in(env, "status", job_id[:8])
        assert status.returncode == 0 and f"job {job_id}" in status.stdout and "status=SUCCEEDED" in status.stdout
    finally:
        up.send_signal(signal.SIGINT)
        await asyncio.to_thread(up.wait, 30)
        up.stdout.close()
    # And once the fleet stops, nothing claims it is still there
    assert not (state / "embedded.json").exists()


async def test_bootstrap_on_a_real_account_names_it_and_asks_first(settings: FleetSettings, aws_endpoint: str) -> None:
    # Given no endpoint: real AWS (STS reached here through the emulator), and no terminal to answer in
    env = without_endpoint(fleet_env(settings), AWS_ENDPOINT_URL_STS=aws_endpoint)

    # When the user runs `fleet bootstrap`
    result = await run_in(env, "bootstrap")

    # Then it names the account and region, refuses without --yes, and creates nothing
    assert result.returncode == 1
    assert "account 123456789012 (us-east-1)" in result.stderr and "--yes" in result.stderr
    assert "created" not in result.stdout


async def test_mistakes_get_one_line_errors(settings: FleetSettings) -> None:
    # Given nothing listening where the endpoint points
    closed = {**fleet_env(settings), "FLEET_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    refused = await run_in(closed, "status", "abc")
    # Then one line, at once
    assert refused.returncode == 2 and time.monotonic() - started < 10
    assert refused.stderr.count("\n") == 1 and "nothing answers at" in refused.stderr

    # Given an emulator that was never bootstrapped (a fresh prefix): a clear next step
    fresh = await run_fleet(settings, "submit", "echo", "hi")
    assert fresh.returncode == 2 and "run `fleet bootstrap` first" in fresh.stderr
    assert "Traceback" not in fresh.stderr

    # Given a DLQ asked for by an unknown name: the valid names, in one line
    nope = await run_fleet(settings, "dlq", "nope")
    assert nope.returncode != 0 and "known:" in nope.stderr and "finalizer" in nope.stderr
    assert "Traceback" not in nope.stderr

    # Given an empty job id
    empty = await run_fleet(settings, "status", "")
    assert empty.returncode == 1 and "give a job id" in empty.stderr and "Traceback" not in empty.stderr

    # And the version is one flag away
    version = await run_fleet(settings, "--version")
    assert version.returncode == 0 and version.stdout.startswith("fleet ")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLEET_WORKERS__NOPE__CONCURRENCY": "3"}, "FLEET_WORKERS__NOPE: no such worker"),
        ({"FLEET_WORKERS__ECHO__CONCURENCY": "4"}, "FLEET_WORKERS__ECHO__CONCURENCY: Extra inputs are not permitted"),
        ({"FLEET_DEFAULTS__WAIT_TIME_SECONDS": "0"}, "FLEET_DEFAULTS__WAIT_TIME_SECONDS: Input should be greater"),
    ],
)
async def test_settings_mistakes_name_the_variable(settings: FleetSettings, env: dict[str, str], named: str) -> None:
    result = await run_fleet(settings, "worker", "echo", "--burst", **env)
    assert result.returncode == 2 and named in result.stderr, result.stderr


async def test_a_redrive_moves_what_the_dlq_held_once_and_stops_while_the_worker_runs(
    fleet_services: Services,
) -> None:
    settings = fleet_services.settings
    # Given four messages that fail Fatal every time, dead-lettered
    url, dlq = await queue_urls(fleet_services)
    await send(fleet_services, url, [{"text": f"t{i}", "fail": "fatal"} for i in range(4)])
    first = await run_fleet(settings, "worker", "echo", "--burst", FLEET_DEFAULTS__WAIT_TIME_SECONDS="1")
    assert first.returncode == 0, first.stderr[-2000:]

    # When the worker runs on while they are redriven (it dead-letters each again within milliseconds)
    env = fleet_env(settings, FLEET_DEFAULTS__WAIT_TIME_SECONDS="1")
    worker = subprocess.Popen(fleet_cmd("worker", "echo"), env=env, stderr=subprocess.DEVNULL)
    try:
        moved = await run_fleet(settings, "dlq", "echo", "--redrive")
        # Then the redrive ends, having moved the four it found, each once
        assert moved.returncode == 0 and "moved 4 messages" in moved.stdout, moved.stdout

        # And --limit is honoured
        await asyncio.sleep(3)  # the worker dead-letters them again
        one = await run_fleet(settings, "dlq", "echo", "--redrive", "--limit", "1")
        assert one.returncode == 0 and "moved 1 message " in one.stdout, one.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    await asyncio.sleep(1)
    assert len(await drain_queue(fleet_services, dlq, wait=1)) == 4


def test_sample_inputs_ship_with_the_project() -> None:
    root = Path(__file__).resolve().parents[1]
    for sample in (
        "workers/finalizer/samples/event.json",
        "workers/finalizer/samples/failure.json",
        "workers/ingest/samples/orders-1.ndjson",
        "workers/ingest/samples/s3-notification.json",
    ):
        assert (root / sample).stat().st_size > 0, sample
    assert os.environ.get("FLEET_STATE_DIR")  # (tests never see the user's own embedded fleet)
