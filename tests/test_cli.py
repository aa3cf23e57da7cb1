"""The `fleet` command line, run as a user runs it."""

from __future__ import annotations

import json
import uuid

from shared.resources import LEASES
from shared.settings import FleetSettings
from shared.stage import Services
from tests.helpers import drain_queue, queue_urls, send
from tests.test_process import run_fleet
from workers.finalizer.resources import FINALIZE

fleet = run_fleet


async def test_help_documents_every_command(settings: FleetSettings) -> None:
    # When a user asks for help
    result = await fleet(settings, "--help")
    # Then every command is listed
    assert result.returncode == 0
    for command in ("worker", "up", "bootstrap", "submit", "status", "dlq", "health", "demo"):
        assert command in result.stdout


async def test_bootstrap_print_emits_the_declared_resources(settings: FleetSettings) -> None:
    # When infra asks for the resource list
    result = await fleet(settings, "bootstrap", "--print")
    # Then it is JSON naming every contract resource, prefixed, without secret values
    resources = json.loads(result.stdout)
    names = {r["name"] for r in resources}
    assert settings.name_of(FINALIZE) in names and settings.name_of(LEASES) in names
    assert all("placeholder" not in r for r in resources)


async def test_submit_then_work_then_status_shows_the_stage_history(fleet_services: Services) -> None:
    settings = fleet_services.settings
    # Given a job submitted from the command line
    submitted = await fleet(settings, "submit", "echo", "hello world")
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and uuid.UUID(job_id)

    # When the worker runs in burst mode
    worked = await fleet(settings, "worker", "echo", "--burst", FLEET_DEFAULTS__WAIT_TIME_SECONDS="1")
    assert worked.returncode == 0, worked.stderr[-2000:]

    # Then `fleet status` shows each transition of the job
    status = await fleet(settings, "status", job_id)
    assert status.returncode == 0
    for word in ("SUBMITTED", "RUNNING", "ECHOED", "SUCCEEDED", "chars=11"):
        assert word in status.stdout
    # And a finished job shows its final status, while the text itself (the producer's) was never stored
    assert "status=SUCCEEDED" in status.stdout.splitlines()[0]
    assert "hello world" not in status.stdout
    missing = await fleet(settings, "status", str(uuid.uuid4()))
    assert missing.returncode == 1


async def test_dlq_shows_reasons_and_redrive_moves_messages_back(fleet_services: Services) -> None:
    settings = fleet_services.settings
    # Given two poison messages dead-lettered by the worker
    url, dlq = await queue_urls(fleet_services)
    await send(fleet_services, url, ["{broken", {"text": 5}])
    worked = await fleet(settings, "worker", "echo", "--burst", FLEET_DEFAULTS__WAIT_TIME_SECONDS="1")
    assert worked.returncode == 0

    # When the operator looks at the DLQ
    shown = await fleet(settings, "dlq", "echo")

    # Then both are listed with their reasons
    assert "2 dead letters" in shown.stdout
    assert "NOT_JSON" in shown.stdout and "INVALID" in shown.stdout

    # And when they are redriven, they are back on the source queue without the failure attributes
    moved = await fleet(settings, "dlq", "echo", "--redrive")
    assert "moved 2 messages" in moved.stdout
    back = await drain_queue(fleet_services, url, wait=0)
    assert sorted(m["Body"] for m in back) == sorted(["{broken", json.dumps({"text": 5})])
    assert all("fleet.error" not in m.get("MessageAttributes", {}) for m in back)
    assert await drain_queue(fleet_services, dlq, wait=0) == []
