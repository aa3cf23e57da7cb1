"""`fleet` — run, feed and inspect the fleet's workers.

Every command reads the same `FLEET_*` settings; point `FLEET_ENDPOINT_URL` at LocalStack or moto, or
leave it unset for real AWS. `fleet up --embedded` and `fleet demo` start their own emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.table import Table

from shared import jobview, local
from shared.declaration import load
from shared.logs import configure_logging
from shared.registry import Registry, UnknownWorker, discover
from shared.resources import DeadLetters, Queue
from shared.settings import ConfigError, FleetSettings, load_settings

console = Console(highlight=False)
if not console.is_terminal:
    # Piped or captured (CI, `make demo | tee`): rich would assume 80 columns and fold every table.
    console = Console(highlight=False, width=120)


_registry: Registry | None = None


def registry() -> Registry:
    """The installed workers, discovered once per process."""
    global _registry
    if _registry is None:
        _registry = discover()
    return _registry


def _settings(**overrides: Any) -> FleetSettings:
    """The settings every command runs with. With no endpoint configured, an embedded fleet started from
    another shell (`fleet up --embedded`) is used rather than real AWS, and the command says so."""
    if "endpoint_url" not in overrides and not (
        os.environ.get("FLEET_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    ):
        embedded = local.running()
        if embedded is not None:
            print(
                f"fleet: using the embedded fleet at {embedded.url} (`fleet up --embedded`, pid {embedded.pid}); "
                "set FLEET_ENDPOINT_URL to choose another endpoint",
                file=sys.stderr,
            )
            overrides["endpoint_url"] = embedded.url
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    settings = load_settings(**overrides)
    registry().check(settings)
    if settings.endpoint_url and not local.answers(settings.endpoint_url):
        raise Unreachable(settings.endpoint_url)
    configure_logging(settings.log_level, settings.log_format)
    return settings


class Unreachable(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# --- worker / up ---------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from shared.app import run_workers

    settings = _settings()
    registry().expand([args.name])
    return _run(_ret0(run_workers(settings, [args.name], burst=args.burst, registry=registry())))


async def _ret0(coro: Coroutine[Any, Any, Any]) -> int:
    await coro
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from shared.app import run_workers

    names = [s.name for s in registry().expand(args.workers.split(",") if args.workers else registry().names())]

    async def up(settings: FleetSettings) -> int:
        await _bootstrap(settings, quiet=True)
        await run_workers(
            settings,
            names,
            registry=registry(),
            on_started=lambda: console.print(
                f"[bold]fleet up[/]: {len(names)} workers ({', '.join(names)}) — Ctrl-C to stop"
            ),
        )
        return 0

    if args.embedded:
        return _with_embedded(up, announce=True)
    return _run(up(_settings()))


def _with_embedded(main: Callable[[FleetSettings], Coroutine[Any, Any, int]], *, announce: bool = False) -> int:
    from shared.emulator import EmbeddedAws, endpoint_env

    with EmbeddedAws(mode="thread", port=local.embedded_port() if announce else 0) as aws, endpoint_env(aws.url):
        console.print(f"embedded AWS emulator (moto) at [bold]{aws.url}[/]")
        if not announce:
            return _run(main(_settings(endpoint_url=aws.url)))
        state = local.announce(aws.url)
        console.print(f"other shells find it through {state}: just run `fleet submit ...`, `fleet status ...`")
        try:
            return _run(main(_settings(endpoint_url=aws.url)))
        finally:
            local.withdraw(aws.url)


# --- bootstrap -----------------------------------------------------------------------------------------


async def _bootstrap(settings: FleetSettings, *, quiet: bool = False) -> int:
    from shared.bootstrap import Bootstrapper, Change
    from shared.clients import AwsClients

    def show(change: Change) -> None:
        if not quiet:
            colour = {"created": "green", "updated": "yellow"}.get(change.action, "dim")
            console.print(f"  [{colour}]{change.action:<9}[/] {change.kind:<7} {change.name}")

    async with AwsClients(settings) as aws:
        changes = await Bootstrapper(aws, registry()).run(progress=show)
    counts = {a: sum(c.action == a for c in changes) for a in ("created", "updated", "unchanged")}
    if not quiet:
        console.print(", ".join(f"{n} {a}" for a, n in counts.items()))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.print:
        from shared.bootstrap import plan

        print(json.dumps(plan(registry(), settings), indent=2))
        return 0
    if settings.endpoint_url is None and not args.yes and not _confirm_real_account(settings):
        return 1
    return _run(_bootstrap(settings))


def _confirm_real_account(settings: FleetSettings) -> bool:
    """Before creating resources in a real AWS account: say which, and ask (or refuse without a terminal)."""
    from shared.clients import aws_identity

    account, arn = _run_value(aws_identity(settings))
    count = len(registry().resources())
    print(
        f"fleet bootstrap will create or update {count} resources in AWS account {account} "
        f"({settings.region}) as {arn}.",
        file=sys.stderr,
    )
    if not sys.stdin.isatty():
        print("fleet: not a terminal to ask in: run `fleet bootstrap --yes` to go ahead", file=sys.stderr)
        return False
    return input("Go ahead? [y/N] ").strip().lower() in ("y", "yes")


def _run_value(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


# --- submit / status -----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from shared.app import open_services

    settings = _settings()

    async def submit() -> int:
        async with open_services(settings) as services:
            job_id = await args.submit(args, services)
            print(job_id, flush=True)
            if args.wait:
                return await jobview.follow(services.jobs, job_id, console)
        return 0

    return _run(submit())


def cmd_status(args: argparse.Namespace) -> int:
    from shared.app import open_services

    settings = _settings()

    async def status() -> int:
        async with open_services(settings) as services:
            try:
                job_id = await jobview.resolve(services.jobs, args.id)
                if args.follow:
                    return await jobview.follow(services.jobs, job_id, console)
                job, children = await jobview.load(services.jobs, job_id)
            except jobview.JobNotFound as exc:
                print(f"fleet: {exc}", file=sys.stderr)
                return 1
        console.print(jobview.view(job, children))
        return 0

    return _run(status())


# --- dlq / health --------------------------------------------------------------------------------------


def cmd_dlq(args: argparse.Namespace) -> int:
    from shared.app import open_services
    from shared.dlq import peek, redrive

    settings = _settings()

    queue = _queue_named(args.name)
    args.limit = 50 if args.limit_given is None else args.limit_given

    async def dlq() -> int:
        async with open_services(settings) as services:
            sqs = services.aws.sqs
            source = settings.name_of(queue)
            source_url = (await sqs.get_queue_url(QueueName=source))["QueueUrl"]
            dlq_url = (await sqs.get_queue_url(QueueName=settings.name_of(DeadLetters.of(queue))))["QueueUrl"]
            if args.redrive:
                limit = None if args.limit_given is None else args.limit
                # Progress on a terminal only: piped, the last line says it all.
                show = (lambda n: console.print(f"  moved {n}…", end="\r")) if console.is_terminal else None
                moved = await redrive(sqs, dlq_url, source_url, limit=limit, progress=show)
                console.print(f"moved {moved} message{'s' if moved != 1 else ''} from {source}-dlq back to {source}")
                return 0
            letters = await peek(sqs, dlq_url, args.limit)
        table = Table("source id", "worker", "attempts", "code", "reason", "body")
        for d in letters:
            copies = f" (×{d.copies})" if d.copies > 1 else ""
            table.add_row(d.source_message_id[:8] + copies, d.worker, d.attempts, d.code, d.error, d.body[:60])
        console.print(f"[bold]{source}-dlq[/]: {len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
        console.print(table)
        return 0

    return _run(dlq())


def _queue_named(name: str) -> Queue:
    """A worker's queue by worker name, or a declared queue by key."""
    if name in registry().workers and registry().workers[name].queue is not None:
        queue = registry().workers[name].queue
        assert queue is not None
        return queue
    queues = {r.key: r for r in registry().resources() if isinstance(r, Queue)}
    if name in queues:
        return queues[name]
    known = sorted({*queues, *(w.name for w in registry().workers.values() if w.queue)})
    raise SystemExit(f"fleet: no worker or queue {name!r}; known: {', '.join(known)}")


def cmd_health(args: argparse.Namespace) -> int:
    from shared.health import check_health

    settings = load_settings()
    ok, detail = check_health(settings.health_dir, args.name, max_age=args.max_age)
    print(f"{args.name}: {'healthy' if ok else 'unhealthy'} — {detail}")
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from shared.demo import run_demo

    return _with_embedded(lambda settings: run_demo(settings, console, registry()))


# --- parser --------------------------------------------------------------------------------------------


EPILOG = """\
common settings (environment):
  FLEET_ENDPOINT_URL / AWS_ENDPOINT_URL   emulator endpoint; unset = real AWS
  FLEET_REGION                            AWS region (default us-east-1)
  FLEET_PREFIX                            prefix for every resource name
  FLEET_LOG_LEVEL, FLEET_LOG_FORMAT       INFO | DEBUG ..., json | text
  FLEET_METRICS_MODE                      emf (default) | cloudwatch | off
  FLEET_DEFAULTS__<FIELD>                 tuning for every worker, e.g. FLEET_DEFAULTS__CONCURRENCY=20
  FLEET_WORKERS__<NAME>__<FIELD>          tuning for one worker, e.g. FLEET_WORKERS__CLIPS__VISIBILITY_TIMEOUT=120
  FLEET_QUEUES__<KEY>, FLEET_TABLES__<KEY>, FLEET_BUCKETS__<KEY>   rename a resource

examples:
  fleet demo                          everything end to end on an embedded emulator
  fleet up --embedded                 the whole fleet locally until Ctrl-C
  fleet worker echo --burst           one worker until its queue is empty
  fleet dlq echo --redrive            move dead letters back to their queue
"""


def add_submit_commands(kinds: Any) -> None:
    for spec in registry().workers.values():
        if spec.submit:
            load(spec.submit)(kinds)


def build_parser() -> argparse.ArgumentParser:
    names = [*registry().names(), *registry().groups()]
    parser = argparse.ArgumentParser(
        prog="fleet",
        description=(
            "Long-running asyncio workers for AWS pipelines. Settings come from FLEET_* environment "
            "variables (see README); FLEET_ENDPOINT_URL points at LocalStack or moto."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fleet {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run one worker until SIGTERM/SIGINT (drains in-flight messages)")
    p.add_argument("name", help=f"one of: {', '.join(names)}")
    p.add_argument("--burst", action="store_true", help="exit once the queue stays empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("up", help="bootstrap and run every worker in one process until Ctrl-C")
    p.add_argument("--embedded", action="store_true", help="start an embedded AWS emulator (moto) first")
    p.add_argument("--workers", help="comma-separated subset of workers")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("bootstrap", help="create every queue, bucket, table... idempotently")
    p.add_argument("--print", action="store_true", help="print the declared resources as JSON instead")
    p.add_argument("--yes", action="store_true", help="on real AWS, do not ask before creating anything")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("submit", help="put a job on its queue and print its id")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    add_submit_commands(kinds)
    for kind in kinds.choices.values():
        kind.add_argument("--wait", action="store_true", help="then follow the job until it ends")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job's stage history (an id, or its first characters)")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="show it live until the job ends")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dlq", help="show a queue's dead letters with their reasons, or move them back")
    p.add_argument("name", help="a worker (ingest, finalizer, ...) or a queue key (finalize, ...)")
    p.add_argument("--redrive", action="store_true", help="move the dead letters back to their queue, each once")
    p.add_argument("--limit", type=int, default=None, dest="limit_given", help="at most this many (default: all)")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("health", help="exit 0 if the worker's heartbeat is fresh (container health check)")
    p.add_argument("name")
    p.add_argument("--max-age", type=float, default=30.0, help="seconds a heartbeat stays valid")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("demo", help="run the fleet end to end on an embedded emulator and print a summary")
    p.set_defaults(func=cmd_demo)
    for spec in registry().workers.values():
        if spec.cli:
            load(spec.cli)(sub)  # a worker's own commands; each sets `func(args) -> int`
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet")
    except PackageNotFoundError:
        return "unknown"


MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ResourceNotFoundException", "NoSuchBucket"}


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from shared.errors import error_code

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (ConfigError, UnknownWorker) as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(
            f"fleet: nothing answers at {exc.url} (FLEET_ENDPOINT_URL): is `fleet up --embedded` "
            "or your emulator running?",
            file=sys.stderr,
        )
        return 2
    except EndpointConnectionError as exc:
        print(f"fleet: cannot reach AWS: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "fleet: no AWS credentials, and no embedded fleet running: start `fleet up --embedded`, "
            "set FLEET_ENDPOINT_URL, or configure AWS credentials",
            file=sys.stderr,
        )
        return 2
    except ClientError as exc:
        if error_code(exc) in MISSING:
            message = exc.response.get("Error", {}).get("Message") or error_code(exc)
            print(f"fleet: {message}: run `fleet bootstrap` first", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
