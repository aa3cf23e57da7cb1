"""One IAM-enforcing moto server for the whole session (a subprocess, apart from the tests' own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.iam.harness import IamEmulator


@pytest.fixture(scope="session")
def iam_emulator() -> Iterator[IamEmulator]:
    emulator = IamEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()
