"""Every test talks to a real AWS emulator over HTTP.

- `AWS_ENDPOINT_URL`/`FLEET_TEST_ENDPOINT_URL` set: that endpoint (e.g. docker compose's LocalStack);
- else, when LocalStack is wanted (`FLEET_TEST_LOCALSTACK=1`, or a `LOCALSTACK_AUTH_TOKEN` is set, which
  the localstack image requires) and a Docker engine answers: LocalStack through testcontainers;
- else (no Docker engine: testcontainers fails within ~0.3 s): an embedded moto server, started once per
  session on a free loopback port.

Each test gets its own resource-name prefix, so tests never see each other's queues or tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.emulator import EmbeddedAws
from shared.registry import discover
from shared.settings import FleetSettings, load_settings
from shared.stage import Services


def localstack_wanted() -> bool:
    flag = os.environ.get("FLEET_TEST_LOCALSTACK", "")
    return flag == "1" or (flag != "0" and bool(os.environ.get("LOCALSTACK_AUTH_TOKEN")))


def _localstack() -> Iterator[str] | None:
    if not localstack_wanted():
        return None
    try:
        from testcontainers.localstack import LocalStackContainer

        container = LocalStackContainer()
        container.start()
    except Exception:  # no Docker engine: docker.errors.DockerException within ~0.3 s
        return None

    def gen() -> Iterator[str]:
        try:
            yield container.get_url()
        finally:
            container.stop()

    return gen()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    configured = os.environ.get("FLEET_TEST_ENDPOINT_URL")
    if configured:
        yield configured
        return
    localstack = _localstack()
    if localstack is not None:
        yield from localstack
        return
    with EmbeddedAws(mode="thread") as emulator:
        yield emulator.url


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may ever reach a real account: strip AWS_*/FLEET_* and point at the emulator. Nor may it find,
    or announce, the embedded fleet of the user running the tests (`fleet up --embedded`'s state file)."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "FLEET_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FLEET_ENDPOINT_URL", aws_endpoint)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def settings(prefix: str, tmp_path: Path, aws_endpoint: str) -> FleetSettings:
    return load_settings(
        prefix=prefix, endpoint_url=aws_endpoint, health_dir=str(tmp_path / "health"), metrics_mode="off"
    )


@pytest.fixture
async def services(settings: FleetSettings) -> AsyncIterator[Services]:
    async with open_services(settings, pool_size=50) as svc:
        yield svc


@pytest.fixture
async def fleet(services: Services) -> Services:
    """Services with every declared resource created under the test's prefix."""
    await Bootstrapper(services.aws, discover()).run()
    return services


@pytest.fixture
async def fleet_services(fleet: Services) -> Services:
    """Alias of `fleet` for modules where `fleet` names a helper."""
    return fleet
