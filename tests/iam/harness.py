"""Run a worker's scenario as an IAM user holding exactly its generated policy, on a moto server that
enforces IAM (`INITIAL_NO_AUTH_ACTION_COUNT`), and record every call it makes.

A scenario (tests/iam/scenarios/<worker>.py) feeds the worker with `run.admin` (full rights), runs it
with `await run.burst()` under the worker's own identity, and checks the outcome with `run.admin`.
Presigned URLs the worker makes are honoured with its identity (tests/iam/presign.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import boto3

from infra.policy import ArnFormat, document
from shared.app import load_stage, open_services
from shared.bootstrap import Bootstrapper
from shared.declaration import WorkerSpec
from shared.emulator import EmbeddedAws, temporary_env
from shared.registry import Registry
from shared.resources import DeadLetters
from shared.runtime import RunStats, Worker
from shared.settings import FleetSettings, WorkerTuning, load_settings
from shared.stage import Context, Services, Stage, Ticking
from tests.helpers import drain_queue, fast_tuning
from tests.iam.actions import Permission, for_moto
from tests.iam.presign import PresignShim
from tests.iam.recorder import Recorder

REGION = "us-east-1"
POISON = "not json: a poison message every worker must dead-letter"
# The runtime's first requests are free; these three make the admin every later request is signed by.
ADMIN_BOOTSTRAP_REQUESTS = 3


class Denied(AssertionError):
    """The worker was refused a call: its policy lacks a permission it needs."""

    def __init__(self, denied: list[Permission]) -> None:
        super().__init__("AccessDenied: " + ", ".join(sorted({str(p) for p in denied})))
        self.denied = denied


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


class IamEmulator:
    """A second moto server (a subprocess, once per session) that checks every request against IAM."""

    def __init__(self) -> None:
        self.server = EmbeddedAws(mode="process")  # a subprocess: its CPU is not the tests' GIL
        self.presign: PresignShim | None = None
        self.account = ""
        self.admin = Keys("", "")
        self._opening: dict[int, asyncio.Lock] = {}  # one per event loop (each test has its own)
        self._iam: Any = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> IamEmulator:
        with temporary_env({"INITIAL_NO_AUTH_ACTION_COUNT": str(ADMIN_BOOTSTRAP_REQUESTS)}):
            self.server.start()  # the subprocess takes its environment now
        iam = self._client("iam", Keys("bootstrap", "bootstrap"))
        iam.create_user(UserName="fleet-admin")
        iam.put_user_policy(
            UserName="fleet-admin",
            PolicyName="admin",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="fleet-admin")["AccessKey"]
        self.admin = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        self.account = self._client("sts", self.admin).get_caller_identity()["Account"]
        self.presign = PresignShim(self.url, REGION).start()
        return self

    def stop(self) -> None:
        if self.presign is not None:
            self.presign.stop()
        self.server.stop()

    def _client(self, service: str, keys: Keys) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=keys.access_key,
            aws_secret_access_key=keys.secret_key,
        )

    def user(self, name: str, policy: dict[str, Any]) -> Keys:
        """An IAM user whose only permissions are `policy` (an inline policy)."""
        if self._iam is None:
            self._iam = self._client("iam", self.admin)
        iam = self._iam
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="worker", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    @contextlib.asynccontextmanager
    async def services(self, settings: FleetSettings, keys: Keys) -> AsyncIterator[Services]:
        # Credentials come from the environment when the clients are created; runs may overlap, so
        # one opens at a time.
        async with self._opening.setdefault(id(asyncio.get_running_loop()), asyncio.Lock()):
            with temporary_env(keys.env()):
                opened = open_services(settings, pool_size=60)
                services = await opened.__aenter__()
        try:
            yield services
        finally:
            await opened.__aexit__(None, None, None)


def policy_for(spec: WorkerSpec, settings: FleetSettings, account: str) -> dict[str, Any]:
    """The worker's policy exactly as infra/ generates it, with this emulator's ARNs."""
    return document(spec, ArnFormat(REGION, account, settings.name_of), metrics_namespace=settings.metrics_namespace)


class _Probe:
    """The worker's stage, except that in the first phase its first handler waits for a visibility
    heartbeat to be answered, then stops the worker and never finishes: the runtime's drain cancels it
    and releases its message. Every run thus exercises the heartbeat and the release, whatever the stage."""

    def __init__(self, stage: Stage[Any], recorder: Recorder, *, hold_first: bool) -> None:
        self._stage = stage
        self._recorder = recorder
        self._hold = hold_first
        self.worker: Worker | None = None
        self.name = stage.name

    def parse(self, body: str) -> Any:
        return self._stage.parse(body)

    async def handle(self, message: Any, ctx: Context) -> None:
        if self._hold:
            self._hold = False
            async with asyncio.timeout(30):
                await self._recorder.completed("sqs:ChangeMessageVisibility").wait()
            assert self.worker is not None
            self.worker.stop()
            await asyncio.Event().wait()  # until the drain gives up on it
        started, cpu = time.perf_counter(), cpu_seconds()
        await self._stage.handle(message, ctx)
        self._recorder.durations.append((time.perf_counter() - started, cpu_seconds() - cpu))


def cpu_seconds() -> float:
    """CPU of this process and of the children it has waited for: a task pays for the ffmpeg it runs too."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


class _TickingProbe(_Probe):
    @property
    def tick_interval(self) -> float:
        return float(self._stage.tick_interval)  # type: ignore[attr-defined]

    async def tick(self) -> bool:
        return bool(await self._stage.tick())  # type: ignore[attr-defined]


@dataclass
class BurstResult:
    stats: RunStats
    dead_letters: list[dict[str, Any]]  # what reached the DLQ besides the harness's poison message


@dataclass
class Run:
    """One run of one worker's scenario."""

    spec: WorkerSpec
    settings: FleetSettings
    admin: Services
    worker: Services
    recorder: Recorder
    ident: str  # unique per run (its resources have their own prefix too)
    tmp: Path  # a scratch folder of this run

    def tuning(self, **overrides: Any) -> WorkerTuning:
        declared = dict(self.spec.tuning)
        base = {"heartbeat_interval": 0.2, "visibility_timeout": 30, "burst_idle_seconds": 0}
        return fast_tuning(**{**declared, **base, **overrides})

    async def burst(self, stage: Stage[Any] | None = None, *, timeout: float = 60, **tuning: Any) -> BurstResult:
        """Dead-letter a poison message and drain the worker's queue under its own identity, in two
        runs: the first is stopped once its first handler has seen a heartbeat (that message is
        released), the second drains everything.

        Stops at the first AccessDenied (raising `Denied`), whether or not the runtime would have
        tolerated it."""
        queue = self.spec.queue
        if queue is None:
            raise TypeError(f"worker {self.spec.name!r} consumes no queue: run it yourself with run.worker")
        sqs = self.admin.aws.sqs
        url = (await sqs.get_queue_url(QueueName=self.settings.name_of(queue)))["QueueUrl"]
        dlq = (await sqs.get_queue_url(QueueName=self.settings.name_of(DeadLetters.of(queue))))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody=POISON)

        inner = stage or load_stage(self.spec, self.worker)
        first = await self._run(inner, timeout, hold_first=True, **{"drain_timeout": 0.3, **tuning})
        assert first.released >= 1, "the first run released nothing: does the scenario queue a valid message?"
        second = await self._run(inner, timeout, hold_first=False, **tuning)
        stats = RunStats(**{f.name: getattr(first, f.name) + getattr(second, f.name) for f in fields(RunStats)})
        letters = await drain_queue(self.admin, dlq, wait=0)
        bodies = [m.get("Body") for m in letters]
        assert POISON in bodies, f"the poison message was not dead-lettered: {bodies}"
        return BurstResult(stats, [m for m in letters if m.get("Body") != POISON])

    async def _run(self, inner: Stage[Any], timeout: float, *, hold_first: bool, **tuning: Any) -> RunStats:
        queue = self.spec.queue
        assert queue is not None
        probe = (_TickingProbe if isinstance(inner, Ticking) else _Probe)(inner, self.recorder, hold_first=hold_first)
        if isinstance(inner, Ticking):
            # A burst ends on an empty queue once no tick reports pending work; give a tick the time to
            # run after the last message, or the burst may end before the stage's time-driven work.
            tuning = {"burst_idle_seconds": max(0.5, 3 * float(inner.tick_interval)), **tuning}
        denied = asyncio.create_task(self.recorder.denied_event.wait())
        try:
            created = asyncio.create_task(
                Worker.create(probe, self.worker, queue=queue, tuning=self.tuning(**tuning), burst=True)
            )
            await asyncio.wait({created, denied}, return_when=asyncio.FIRST_COMPLETED)
            if denied.done():
                created.cancel()
                with contextlib.suppress(BaseException):
                    await created
                raise Denied(self.recorder.denied)
            probe.worker = worker = created.result()
            running = asyncio.create_task(worker.run())
            done, _ = await asyncio.wait({running, denied}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if running not in done:
                worker.stop(now=True)
                await asyncio.wait_for(running, 30)
            if denied.done():
                raise Denied(self.recorder.denied)
            if running not in done:
                raise TimeoutError(f"{self.spec.name} did not drain its queue within {timeout:g}s")
            return running.result()
        finally:
            denied.cancel()


Scenario = Callable[[Run], Awaitable[None]]


@dataclass
class Outcome:
    settings: FleetSettings
    used: set[Permission]
    denied: list[Permission]
    error: BaseException | None
    durations: list[tuple[float, float]]  # (wall, CPU incl. finished children) s of every handler that ended

    @property
    def passed(self) -> bool:
        return self.error is None and not self.denied


async def exercise(
    iam: IamEmulator,
    registry: Registry,
    spec: WorkerSpec,
    scenario: Scenario,
    tmp: Path,
    policy: Callable[[dict[str, Any]], dict[str, Any]] = lambda p: p,
) -> Outcome:
    """Bootstrap a fresh prefix, make a user holding `policy(generated policy)` (as moto reads it), run
    the scenario as that user, and say what it used and whether it passed."""
    ident = uuid.uuid4().hex[:8]
    scratch = tmp / ident
    scratch.mkdir(parents=True)
    settings = load_settings(
        prefix=f"i{ident}-",
        environment=f"iam-{ident}",  # the metrics' Environment dimension: runs never mix theirs
        endpoint_url=iam.url,
        region=REGION,
        health_dir=str(scratch / "health"),
        metrics_mode="cloudwatch",  # PutMetricData is part of what the runtime may call
    )
    generated = policy(policy_for(spec, settings, iam.account))
    keys = iam.user(f"{spec.name}-{ident}", for_moto(generated))
    recorder = Recorder()
    async with iam.services(settings, iam.admin) as admin:
        await Bootstrapper(admin.aws, registry).run()
        async with iam.services(settings, keys) as worker:
            recorder.attach(worker.aws)
            assert iam.presign is not None
            iam.presign.route(
                worker.aws.s3,
                keys.access_key,
                keys.secret_key,
                lambda bucket: recorder.refused([Permission("s3:GetObject", bucket)]),
            )
            run = Run(spec, settings, admin, worker, recorder, ident, scratch)
            error: BaseException | None = None
            try:
                await scenario(run)
            except Exception as exc:
                error = exc
    return Outcome(settings, recorder.permissions(), recorder.denied, error, recorder.durations)
