"""A worker is one declaration: the registry, bootstrap and the CLI read it; `shared/` names no worker."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from shared.declaration import WorkerSpec, uses
from shared.registry import Registry, discover
from shared.resources import JOBS, Queue, Table
from shared.settings import ConfigError, FleetSettings, load_settings
from shared.stage import Services
from tests.test_process import run_fleet

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.plugins.shout:WORKER"


def test_shared_imports_nothing_from_workers() -> None:
    # Given every module of the runtime package
    offenders = []
    for path in (ROOT / "shared").rglob("*.py"):
        tree = ast.parse(path.read_text())
        # When its imports are listed
        for node in ast.walk(tree):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n == "workers" or n.startswith("workers.")]
    # Then none of them is a worker package
    assert offenders == []


def test_the_installed_workers_are_found_through_entry_points() -> None:
    # When the registry is discovered without plugins
    registry = discover(plugins="")
    # Then the fleet's own workers are there, each consuming its own queue
    assert {"echo", "ingest", "compact", "finalizer"} <= set(registry.names())
    queues = [spec.queue for spec in registry.workers.values() if spec.queue]
    assert len(queues) == len(set(queues))


def test_a_resource_declared_two_ways_is_refused() -> None:
    # Given two workers that disagree about one table
    a = WorkerSpec("a", "a", "x:y", uses=(uses(Table("things", "fleet-things", hash_key="id"), "dynamodb:GetItem"),))
    b = WorkerSpec("b", "b", "x:y", uses=(uses(Table("things", "fleet-things", hash_key="pk"), "dynamodb:GetItem"),))
    # When the registry is built, Then it names the conflict
    with pytest.raises(ValueError, match="declares table 'things' differently"):
        Registry.of([a, b])
    # And the same declaration twice is one resource
    assert len([r for r in Registry.of([a, a]).resources() if r.key == "things"]) == 1


def test_declared_tuning_sits_between_fleet_defaults_and_per_worker_overrides() -> None:
    # Given a worker that declares its own visibility timeout and concurrency
    spec = WorkerSpec("slow", "s", "x:y", queue=Queue("slow", "fleet-slow"), tuning={"visibility_timeout": 300})
    registry = Registry.of([spec])
    # When fleet-wide defaults and a per-worker override are set
    settings = load_settings(
        defaults={"visibility_timeout": 60, "concurrency": 3}, workers={"slow": {"concurrency": 7}}
    )
    tuning = registry.tuning(settings, "slow")
    # Then the declaration beats the fleet default, and the per-worker override beats both
    assert (tuning.visibility_timeout, tuning.concurrency) == (300, 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": {"nope": {"concurrency": 3}}}, "FLEET_WORKERS__NOPE: no such worker"),
        ({"queues": {"nope": "x"}}, "FLEET_QUEUES__NOPE: no such resource"),
        ({"tables": {"jobz": "x"}}, "FLEET_TABLES__JOBZ: no such resource (known: clips, files, jobs, leases"),
    ],
)
def test_settings_naming_an_unknown_worker_or_resource_are_refused(overrides: dict[str, object], message: str) -> None:
    # Given settings that name something nobody declared
    settings = load_settings(**overrides)
    # When they are checked against the installed workers, Then the variable is named
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        discover(plugins="").check(settings)


def test_the_runtime_grants_itself_what_it_calls_on_a_consumed_queue() -> None:
    # Given a worker that declares only its own table
    spec = WorkerSpec("w", "w", "x:y", queue=Queue("w", "fleet-w"), uses=(uses(JOBS, "dynamodb:PutItem"),))
    # When its permissions are listed
    perms = {(u.resource.kind, u.resource.key): set(u.actions) for u in spec.permissions()}
    # Then the runtime's receive/delete/visibility calls, the DLQ send and job tracking are added to its own
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= perms[("queue", "w")]
    assert perms[("dlq", "w")] == {"sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"}
    assert perms[("table", "jobs")] == {"dynamodb:UpdateItem", "dynamodb:PutItem"}


async def test_a_worker_declared_in_tests_bootstraps_runs_and_appears_in_help(settings: FleetSettings) -> None:
    # Given a worker that lives in tests/, added only through FLEET_PLUGINS
    plugin = {"FLEET_PLUGINS": PLUGIN}

    # When a user asks for help, Then it is listed as a worker and a submit kind
    helped = await run_fleet(settings, "--help", **plugin)
    assert helped.returncode == 0
    worker_help = await run_fleet(settings, "worker", "--help", **plugin)
    assert "shout" in worker_help.stdout
    submit_help = await run_fleet(settings, "submit", "--help", **plugin)
    assert "shout" in submit_help.stdout

    # When bootstrap runs, Then its queue and DLQ are created, with the visibility timeout it declared
    printed = json.loads((await run_fleet(settings, "bootstrap", "--print", **plugin)).stdout)
    (queue,) = [r for r in printed if r["kind"] == "queue" and r["key"] == "shout"]
    assert queue["visibility_timeout"] == 45 and queue["consumer"] == "shout"
    booted = await run_fleet(settings, "bootstrap", **plugin)
    assert booted.returncode == 0, booted.stderr
    assert f"created   queue   {settings.prefix}fleet-shout\n" in booted.stdout

    # When a job is submitted and the worker runs until its queue is empty
    submitted = await run_fleet(settings, "submit", "shout", "hello", **plugin)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    worked = await run_fleet(settings, "worker", "shout", "--burst", FLEET_DEFAULTS__WAIT_TIME_SECONDS="1", **plugin)
    assert worked.returncode == 0, worked.stderr[-2000:]

    # Then the job shows the worker's own transition
    status = await run_fleet(settings, "status", job_id, **plugin)
    assert "SHOUTED" in status.stdout and "HELLO" in status.stdout

    # And without the plugin, the worker does not exist
    unknown = await run_fleet(settings, "worker", "shout")
    assert unknown.returncode == 2 and "unknown worker 'shout'" in unknown.stderr


async def test_bootstrap_reads_the_plugin_declaration_in_process(services: Services) -> None:
    # Given the registry with the plugin added
    from shared.bootstrap import Bootstrapper

    registry = discover(plugins=PLUGIN)
    # When bootstrap runs
    changes = await Bootstrapper(services.aws, registry).run()
    # Then the plugin's queue is among the created resources, once
    names = [c.name for c in changes]
    assert names.count(f"{services.settings.prefix}fleet-shout") == 1
