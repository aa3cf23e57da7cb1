"""Which workers exist: found through the `fleet.workers` entry-point group, as pytest finds plugins.

A package declares its workers in its own `pyproject.toml`:

    [project.entry-points."fleet.workers"]
    resize = "mypkg.resize:WORKER"

and `FLEET_PLUGINS=mypkg.resize:WORKER,other:WORKER` adds specs without installing anything (a test's
fixture worker, a worker under development). Nothing in `shared/` names a worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from shared.declaration import WorkerSpec, load
from shared.resources import JOBS, KINDS, LEASES, Queue, Resource
from shared.settings import ConfigError, FleetSettings, WorkerTuning

log = logging.getLogger("fleet.registry")

ENTRY_POINT_GROUP = "fleet.workers"
PLUGINS_ENV = "FLEET_PLUGINS"

PLATFORM: tuple[Resource, ...] = (JOBS, LEASES)


class UnknownWorker(KeyError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"unknown worker {self.name!r}; known: {', '.join(self.known) or 'none'}"


@dataclass(frozen=True)
class Registry:
    workers: Mapping[str, WorkerSpec]

    @classmethod
    def of(cls, specs: Iterable[WorkerSpec]) -> Registry:
        workers: dict[str, WorkerSpec] = {}
        for spec in specs:
            if not isinstance(spec, WorkerSpec):
                raise TypeError(f"a fleet worker must be a WorkerSpec, got {spec!r}")
            if spec.name in workers and workers[spec.name] != spec:
                raise ValueError(f"two different workers are named {spec.name!r}")
            try:
                WorkerTuning.model_validate(dict(spec.tuning))
            except ValidationError as exc:
                raise ValueError(f"worker {spec.name!r} declares invalid tuning: {exc}") from None
            workers[spec.name] = spec
        registry = cls(dict(sorted(workers.items())))
        registry.resources()  # conflicting declarations fail here, at start-up
        return registry

    def names(self) -> list[str]:
        return list(self.workers)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for spec in self.workers.values():
            if spec.group:
                out.setdefault(spec.group, []).append(spec.name)
        return out

    def get(self, name: str) -> WorkerSpec:
        try:
            return self.workers[name]
        except KeyError:
            raise UnknownWorker(name, self.workers) from None

    def expand(self, names: Iterable[str]) -> list[WorkerSpec]:
        """Worker names (or group names) to specs, each once, in order."""
        groups = self.groups()
        out: dict[str, WorkerSpec] = {}
        for name in names:
            if name in groups and name not in self.workers:
                out.update((n, self.workers[n]) for n in groups[name])
            elif name in self.workers:
                out[name] = self.workers[name]
            else:
                raise UnknownWorker(name, [*self.workers, *groups])
        return list(out.values())

    def consumer_of(self, queue: Queue) -> WorkerSpec | None:
        return next((w for w in self.workers.values() if w.queue == queue), None)

    def resources(self) -> list[Resource]:
        """Every resource to create, each once: the runtime's own, then each worker's, by kind."""
        found: dict[tuple[str, str], Resource] = {}

        def add(resource: Resource, owner: str) -> None:
            if not isinstance(resource, KINDS):
                return  # e.g. CloudWatch metrics: nothing to create
            known = found.setdefault(resource.ident, resource)
            if known != resource:
                raise ValueError(
                    f"{owner} declares {resource.kind} {resource.key!r} differently from another worker:\n"
                    f"  {known}\n  {resource}"
                )

        for resource in PLATFORM:
            add(resource, "the runtime")
        for spec in self.workers.values():
            for resource in spec.resources():
                add(resource, f"worker {spec.name!r}")
        order = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(found.values(), key=lambda r: order[type(r)])

    def tuning(self, settings: FleetSettings, name: str) -> WorkerTuning:
        return settings.tuning(name, self.get(name).tuning)

    def check(self, settings: FleetSettings) -> None:
        """Settings that name a worker or resource nobody declared are mistakes: refuse them."""
        problems = [
            f"  FLEET_WORKERS__{name.upper()}: no such worker (known: {', '.join(self.workers)})"
            for name in settings.workers
            if name not in self.workers
        ]
        declared: dict[str, set[str]] = {}
        for resource in self.resources():
            declared.setdefault(resource.overrides, set()).add(resource.key)
        for field in sorted({r.overrides for r in self.resources()} | set(settings.rename_fields())):
            for key in settings.renames(field):
                if key not in declared.get(field, set()):
                    known = ", ".join(sorted(declared.get(field, set()))) or "none"
                    problems.append(f"  FLEET_{field.upper()}__{key.upper()}: no such resource (known: {known})")
        for name in settings.workers:
            if name in self.workers:
                try:
                    self.tuning(settings, name)
                except ValidationError as exc:
                    for err in exc.errors():
                        where = "__".join(str(p).upper() for p in err["loc"])
                        problems.append(f"  FLEET_WORKERS__{name.upper()}__{where}: {err['msg']}")
        if problems:
            raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def _plugin_specs(value: str) -> Iterator[WorkerSpec]:
    for target in filter(None, (t.strip() for t in value.split(","))):
        try:
            spec = load(target)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"{PLUGINS_ENV}: cannot load {target!r}: {exc}") from None
        yield spec


def discover(plugins: str | None = None) -> Registry:
    """The installed workers (entry points) plus those named in `FLEET_PLUGINS`."""
    specs: list[Any] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            specs.append(ep.load())
        except Exception as exc:
            raise ConfigError(f"worker plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    specs.extend(_plugin_specs(os.environ.get(PLUGINS_ENV, "") if plugins is None else plugins))
    try:
        return Registry.of(specs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
