"""`fleet demo`: the fleet end to end on the embedded emulator, with a printed summary.

Bootstraps every resource, then runs each worker's demo step (its `WorkerSpec.demo`) in `demo_order`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from rich.console import Console

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.declaration import load
from shared.logs import configure_logging
from shared.registry import Registry
from shared.settings import FleetSettings

DemoStep = Callable[[FleetSettings, Console], Awaitable[None]]


async def run_demo(settings: FleetSettings, console: Console, registry: Registry) -> int:
    started = time.monotonic()
    # The summary tables are the demo's output; worker logs and EMF lines would bury them.
    settings = settings.model_copy(update={"metrics_mode": "off"})
    configure_logging("WARNING", "text")
    console.rule("[bold]bootstrap")
    async with open_services(settings) as services:
        changes = await Bootstrapper(services.aws, registry).run()
    console.print(f"{len(changes)} resources ready ({sum(c.action == 'created' for c in changes)} created)")
    steps = sorted((s for s in registry.workers.values() if s.demo), key=lambda s: (s.demo_order, s.name))
    for spec in steps:
        assert spec.demo is not None
        console.rule(f"[bold]{spec.name}")
        step_started = time.monotonic()
        step: DemoStep = load(spec.demo)
        await step(settings, console)
        console.print(f"[dim]{spec.name} step took {time.monotonic() - step_started:.1f}s[/]")
    console.print(f"[bold green]demo finished[/] in {time.monotonic() - started:.1f}s")
    return 0
