"""One IAM-enforcing moto server for the whole session (a subprocess, apart from the tests' own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiobotocore.session import AioSession, get_session

import shared.clients
from tests.iam.harness import IamEmulator


@pytest.fixture(scope="session")
def iam_emulator() -> Iterator[IamEmulator]:
    emulator = IamEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def one_model_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run opens its own clients (its own IAM user's keys), and a new botocore session re-reads
    and re-parses the services' JSON models each time: most of a run's CPU. Sessions here share one
    loader, as the clients of one long-lived process do."""
    loader = get_session().get_component("data_loader")

    def session(*args: Any, **kwargs: Any) -> AioSession:
        fresh = get_session(*args, **kwargs)
        fresh.register_component("data_loader", loader)
        return fresh

    monkeypatch.setattr(shared.clients, "get_session", session)
