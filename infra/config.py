"""Deployment settings, from CDK context: fleet-wide defaults and per-worker overrides.

    cdk deploy -c fleet:maxTasks=20 -c fleet:ingest:maxTasks=50 -c fleet:clips:spot=true

Keys (each also as `fleet:<worker>:<key>`): minTasks, maxTasks, stopTimeout (s, <= 120), spot, cpu,
memory (MiB), backlogTarget (visible messages per running task), iteratorAgeTarget (ms, stream
consumers). Fleet-wide only: logRetentionDays, oldestMessageAlarm (s), alarmTopic (a declared topic's
key; default "notifications"), natGateways, image (an image URI instead of building docker/Dockerfile).
Pure Python: the tests read it without importing the CDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infra.model import FARGATE_MAX_STOP_TIMEOUT, Service
from infra.sizing import backlog_target

PREFIX = "fleet:"
# Fargate CPU units -> the memory range (MiB) each allows.
FARGATE_CPU_MEMORY = {
    256: (512, 2048),
    512: (1024, 4096),
    1024: (2048, 8192),
    2048: (4096, 16384),
    4096: (8192, 30720),
}


@dataclass(frozen=True)
class ServiceConfig:
    min_tasks: int = 1
    max_tasks: int = 10
    stop_timeout: int | None = None  # default: the worker's drain timeout + a margin (infra/model.py)
    spot: bool = False
    cpu: int = 512
    memory: int = 1024
    backlog_target: float | None = None  # default: infra/sizing.py, from the measured throughput
    iterator_age_target: int = 60_000


@dataclass(frozen=True)
class DeployConfig:
    defaults: ServiceConfig = ServiceConfig()
    workers: Mapping[str, ServiceConfig] = field(default_factory=dict)
    log_retention_days: int = 30
    oldest_message_alarm: int = 900
    alarm_topic: str = "notifications"
    nat_gateways: int = 1
    image: str | None = None

    def of(self, service: Service) -> ServiceConfig:
        """A worker's settings: its overrides over the fleet's, then the derived defaults, checked."""
        config = self.workers.get(service.name, self.defaults)
        if config.stop_timeout is None:
            config = replace(config, stop_timeout=service.stop_timeout)
        if config.backlog_target is None:
            config = replace(config, backlog_target=backlog_target(service))
        check(service.name, config)
        return config


def check(worker: str, config: ServiceConfig) -> None:
    problems = []
    if not 1 <= config.min_tasks <= config.max_tasks:
        # Backlog per task divides by the running tasks: from zero it could never scale out.
        problems.append(f"minTasks must be between 1 and maxTasks ({config.min_tasks}, {config.max_tasks})")
    if config.stop_timeout is not None and not 2 <= config.stop_timeout <= FARGATE_MAX_STOP_TIMEOUT:
        problems.append(f"stopTimeout must be 2-{FARGATE_MAX_STOP_TIMEOUT} s on Fargate, got {config.stop_timeout}")
    memory = FARGATE_CPU_MEMORY.get(config.cpu)
    if memory is None or not memory[0] <= config.memory <= memory[1]:
        problems.append(f"cpu {config.cpu} with memory {config.memory} MiB is not a Fargate size")
    if config.backlog_target is not None and config.backlog_target <= 0:
        problems.append("backlogTarget must be positive")
    if problems:
        raise ValueError(f"deployment settings for {worker}: " + "; ".join(problems))


def _parse(value: Any, kind: type) -> Any:
    """A context value as its field's type (`-c` gives strings; cdk.json gives JSON values)."""
    if kind is bool and not isinstance(value, bool):
        return str(value).lower() in ("1", "true", "yes", "on")
    return kind(value)


_KEYS = {
    "minTasks": ("min_tasks", int),
    "maxTasks": ("max_tasks", int),
    "stopTimeout": ("stop_timeout", int),
    "spot": ("spot", bool),
    "cpu": ("cpu", int),
    "memory": ("memory", int),
    "backlogTarget": ("backlog_target", float),
    "iteratorAgeTarget": ("iterator_age_target", int),
}
_FLEET_KEYS = {
    "logRetentionDays": ("log_retention_days", int),
    "oldestMessageAlarm": ("oldest_message_alarm", int),
    "alarmTopic": ("alarm_topic", str),
    "natGateways": ("nat_gateways", int),
    "image": ("image", str),
}


def from_context(get: Callable[[str], Any], workers: list[str]) -> DeployConfig:
    """Read `fleet:*` context values (strings from `-c`, or JSON values from cdk.json)."""

    def service(scope: str, base: ServiceConfig) -> ServiceConfig:
        changes = {}
        for key, (attr, kind) in _KEYS.items():
            value = get(f"{PREFIX}{scope}{key}")
            if value is not None:
                changes[attr] = _parse(value, kind)
        return replace(base, **changes)

    defaults = service("", ServiceConfig())
    fleet = {}
    for key, (attr, kind) in _FLEET_KEYS.items():
        value = get(f"{PREFIX}{key}")
        if value is not None:
            fleet[attr] = _parse(value, kind)
    per_worker = {name: service(f"{name}:", defaults) for name in workers}
    return DeployConfig(defaults=defaults, workers=per_worker, **fleet)
