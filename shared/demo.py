"""`fleet demo`: the fleet end to end on the embedded emulator, with a printed summary.

Bootstraps every resource, then runs each worker package's demo step (`workers.DEMO`) in order.
"""

from __future__ import annotations

import importlib
import time

from rich.console import Console

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.logs import configure_logging
from shared.resources import declare
from shared.settings import FleetSettings


async def run_demo(settings: FleetSettings, console: Console) -> int:
    from workers import DEMO

    started = time.monotonic()
    # The summary tables are the demo's output; worker logs and EMF lines would bury them.
    settings = settings.model_copy(update={"metrics_mode": "off"})
    configure_logging("WARNING", "text")
    console.rule("[bold]bootstrap")
    async with open_services(settings) as services:
        changes = await Bootstrapper(services.aws).run(declare(settings))
    console.print(f"{len(changes)} resources ready ({sum(c.action == 'created' for c in changes)} created)")
    for module in DEMO:
        console.rule(f"[bold]{module.split('.')[1]}")
        step_started = time.monotonic()
        await importlib.import_module(module).demo(settings, console)
        console.print(f"[dim]{module.split('.')[1]} step took {time.monotonic() - step_started:.1f}s[/]")
    console.print(f"[bold green]demo finished[/] in {time.monotonic() - started:.1f}s")
    return 0
