"""How much backlog one task may hold: the target of each worker's backlog-per-task scaling.

    backlog target = per-task throughput (messages/s) x LATENCY_TARGET_SECONDS

so a task never holds more than it clears within the latency target, and target tracking adds tasks
when the backlog says one would not. Throughputs are measured by `bench/sizing.py` (one task, the
worker's declared tuning, its least-privilege scenario's input at a larger size) and kept in
infra/sizing.json. A worker not measured yet gets a floor that needs no measurement: each of its
`concurrency` slots finishes at least one message per `visibility_timeout` (the runtime retries a
handler that takes longer), so `concurrency x latency / visibility_timeout` is always cleared in time.
Override per worker with `-c fleet:<worker>:backlogTarget=N`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from infra.model import Service

LATENCY_TARGET_SECONDS = 60
MEASURED = Path(__file__).with_name("sizing.json")


@cache
def measured() -> dict[str, float]:
    """Worker -> messages per second one task handled in `bench/sizing.py`."""
    if not MEASURED.exists():
        return {}
    data = json.loads(MEASURED.read_text())
    return {name: float(entry["msgs_per_s"]) for name, entry in data.get("workers", {}).items()}


def floor_target(service: Service) -> float:
    return service.tuning.concurrency * LATENCY_TARGET_SECONDS / service.tuning.visibility_timeout


def backlog_target(service: Service) -> float:
    rate = measured().get(service.name)
    target = rate * LATENCY_TARGET_SECONDS if rate else floor_target(service)
    return float(max(1, round(target)))
