"""The fleet's stages, by worker name. Imported lazily: a worker process loads only its own stage.

A worker package `workers/<name>/` provides:
- `stage.py`: the stage class (a factory taking `Services`), listed in REGISTRY;
- optionally `submit.py` with `register(kinds)` adding its `fleet submit KIND` sub-command (SUBMIT);
- optionally `demo.py` with `async def demo(settings, console) -> None`, a step of `fleet demo` (DEMO).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shared.stage import Services, Stage

# worker name -> "module:factory"; the factory takes Services and returns the stage.
REGISTRY: dict[str, str] = {
    "echo": "workers.echo.stage:EchoStage",
    "ingest": "workers.ingest.stage:IngestStage",
    "compact": "workers.compact.stage:CompactStage",
    "finalizer": "workers.finalizer.stage:FinalizerStage",
}

# modules with `register(kinds)` for `fleet submit`
SUBMIT: list[str] = [
    "workers.echo.submit",
    "workers.ingest.submit",
    "workers.finalizer.submit",
]

# modules with `async def demo(settings, console)`, run in this order by `fleet demo`
DEMO: list[str] = [
    "workers.echo.demo",
    "workers.ingest.demo",
    "workers.finalizer.demo",
]


def worker_names() -> list[str]:
    return sorted(REGISTRY)


def load_stage(name: str, services: Services) -> Stage[Any]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown worker {name!r}; known: {', '.join(worker_names())}") from None
    module, _, attr = target.partition(":")
    factory: Callable[[Services], Stage[Any]] = getattr(importlib.import_module(module), attr)
    return factory(services)


def add_submit_commands(kinds: Any) -> None:
    for module in SUBMIT:
        importlib.import_module(module).register(kinds)
