"""A worker, declared in one place: what it consumes, what it touches and how, how it is tuned, fed and shown.

    WORKER = WorkerSpec(
        name="compact",
        summary="a manifest's NDJSON files -> one Parquet file",
        stage="workers.compact.stage:CompactStage",
        queue=COMPACT_QUEUE,
        uses=(
            uses(LAKE, "s3:GetObject", "s3:PutObject"),
            uses(FILES, "dynamodb:GetItem", "dynamodb:UpdateItem"),
        ),
        tuning={"visibility_timeout": 120},
        submit="workers.compact.submit:register",
        demo="workers.compact.demo:demo",
    )

The package exposes it (a `fleet.workers` entry point, or `FLEET_PLUGINS`), and everything else reads it:
the registry (`shared/registry.py`) for `fleet worker`, `fleet submit` and `fleet demo`; bootstrap for the
resources; infra/ for the services and their task roles. The module that holds a spec imports only
declarations: the stage, submit and demo are named by "module:attribute" and imported when used, so
`fleet --help` does not load pyarrow or ffmpeg.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.resources import CLOUDWATCH, JOBS, DeadLetters, Queue, Resource, Stream


@dataclass(frozen=True)
class Uses:
    """The AWS actions (IAM names, `service:Action`) a worker calls on one resource."""

    resource: Resource
    actions: tuple[str, ...]


def uses(resource: Resource, *actions: str) -> Uses:
    return Uses(resource, tuple(actions))


# What the SQS runtime itself calls for any worker that consumes a queue.
RUNTIME_QUEUE_ACTIONS = (
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:SendMessage",  # a release re-sends the message (shared/settler.py) so it keeps its attempt
)
RUNTIME_DLQ_ACTIONS = ("sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage")
RUNTIME_JOB_ACTIONS = ("dynamodb:UpdateItem",)  # JobsMiddleware; reading a job is the CLI's business
RUNTIME_METRIC_ACTIONS = ("cloudwatch:PutMetricData",)


def load(target: str) -> Any:
    """Import "package.module:attribute"."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    summary: str
    stage: str  # "module:factory"; the factory takes `Services` and returns the stage
    queue: Queue | None = None  # the SQS queue the runtime consumes for it
    stream: Stream | None = None  # a Kinesis stream it consumes
    uses: tuple[Uses, ...] = ()
    tuning: Mapping[str, Any] = field(default_factory=dict)  # defaults for its `WorkerTuning`
    submit: str | None = None  # "module:register": adds `fleet submit KIND` (argparse sub-parsers)
    demo: str | None = None  # "module:demo": `async def demo(settings, console)`, a step of `fleet demo`
    cli: str | None = None  # "module:register": adds top-level `fleet` commands (argparse sub-parsers)
    demo_order: int = 100  # steps run in this order (then by name)
    group: str | None = None  # `fleet worker GROUP` runs every worker of the group in one process

    def permissions(self) -> list[Uses]:
        """Every resource the worker touches with every action, the runtime's own calls included."""
        merged: dict[tuple[str, str], tuple[Resource, list[str]]] = {}

        def add(resource: Resource, actions: tuple[str, ...]) -> None:
            _, known = merged.setdefault(resource.ident, (resource, []))
            known.extend(a for a in actions if a not in known)

        if self.queue is not None:
            add(self.queue, RUNTIME_QUEUE_ACTIONS)
            add(DeadLetters.of(self.queue), RUNTIME_DLQ_ACTIONS)
            add(JOBS, RUNTIME_JOB_ACTIONS)
            add(CLOUDWATCH, RUNTIME_METRIC_ACTIONS)
        for use in self.uses:
            add(use.resource, use.actions)
        return [Uses(resource, tuple(actions)) for resource, actions in merged.values()]

    def resources(self) -> Iterator[Resource]:
        """The resources this worker needs to exist (bootstrap creates them)."""
        if self.queue is not None:
            yield self.queue
        if self.stream is not None:
            yield self.stream
        for use in self.uses:
            if not isinstance(use.resource, DeadLetters):
                yield use.resource
