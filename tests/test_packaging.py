"""The shipped image and compose file agree with the code: every worker has a service."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.registry import discover

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_every_registered_worker_against_localstack() -> None:
    # Given the compose file
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    # When its worker services are listed
    workers = {
        svc["command"][1]: svc
        for svc in services.values()
        if isinstance(svc.get("command"), list) and svc["command"][:1] == ["worker"]
    }

    # Then each registered worker runs once, health-checked by name, pointed at LocalStack
    assert set(workers) == set(discover().names())
    for name, svc in workers.items():
        assert svc["environment"]["FLEET_WORKER"] == name
        assert svc["environment"]["FLEET_ENDPOINT_URL"] == "http://localstack:4566"
        assert svc["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert services["bootstrap"]["command"] == ["bootstrap"]


def test_image_installs_the_package_and_health_checks_the_worker() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert 'fleet health \\"${FLEET_WORKER' in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
