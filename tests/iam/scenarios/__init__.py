"""Each worker's least-privilege scenario, one module per worker, found by import.

To add yours (one file, `tests/iam/scenarios/<worker>.py`):

    from tests.iam.scenarios import scenario
    from tests.iam.harness import Run

    @scenario("clips")
    async def clips(run: Run) -> None:
        # Given: feed the worker with run.admin (full rights; run.ident makes keys unique)
        ...
        # When: run it under exactly its generated policy (a poison message is added and must be
        # dead-lettered; the first handler waits for a visibility heartbeat)
        result = await run.burst()
        # Then: check the outcome with run.admin
        ...

The run fails at the first AccessDenied. Every IAM action the worker declares must be used by its
scenario; an action only a failure path needs goes in `unused=` with the reason. Only the worker's own
resources are created: `needs=("ingest",)` adds another worker's, for a setup that runs it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tests.iam.harness import Scenario


@dataclass(frozen=True)
class Registered:
    run: Scenario
    unused: Mapping[str, str] = field(default_factory=dict)  # IAM action -> why the scenario cannot use it
    needs: tuple[str, ...] = ()  # other workers whose resources the scenario's setup uses


SCENARIOS: dict[str, Registered] = {}


def scenario(
    worker: str, *, unused: Mapping[str, str] | None = None, needs: tuple[str, ...] = ()
) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        if worker in SCENARIOS:
            raise ValueError(f"two least-privilege scenarios for worker {worker!r}")
        SCENARIOS[worker] = Registered(fn, dict(unused or {}), needs)
        return fn

    return register


def load_all() -> dict[str, Registered]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return SCENARIOS
