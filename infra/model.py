"""The fleet as deployed: one service per registered worker, read from the registry.

docker-compose.yml (infra/compose.py) and the CDK stack (infra/stack.py) are both written from this,
and `fleet bootstrap --print` lists the same resources: nothing names a worker by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.declaration import WorkerSpec
from shared.registry import Registry
from shared.resources import DeadLetters
from shared.settings import FleetSettings, WorkerTuning

# ECS gives a task at most 120 s between SIGTERM and SIGKILL.
FARGATE_MAX_STOP_TIMEOUT = 120
# Time past the drain for the runtime to release what is left, flush metrics and exit.
STOP_MARGIN_SECONDS = 10


@dataclass(frozen=True)
class Service:
    """One worker, run as its own service from the one image."""

    spec: WorkerSpec
    tuning: WorkerTuning
    queue: str | None  # resolved names (prefix and renames applied)
    dlq: str | None
    stream: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def command(self) -> list[str]:
        return ["worker", self.name]

    @property
    def health_command(self) -> list[str]:
        return ["fleet", "health", self.name]

    @property
    def stop_timeout(self) -> int:
        """Seconds between SIGTERM and SIGKILL: the drain, plus the time to settle what is left."""
        return min(FARGATE_MAX_STOP_TIMEOUT, int(self.tuning.drain_timeout) + STOP_MARGIN_SECONDS)


def services(registry: Registry, settings: FleetSettings) -> list[Service]:
    out = []
    for spec in registry.workers.values():
        out.append(
            Service(
                spec=spec,
                tuning=registry.tuning(settings, spec.name),
                queue=settings.name_of(spec.queue) if spec.queue else None,
                dlq=settings.name_of(DeadLetters.of(spec.queue)) if spec.queue else None,
                stream=settings.name_of(spec.stream) if spec.stream else None,
            )
        )
    return out
