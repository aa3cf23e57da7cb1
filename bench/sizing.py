"""Per-task throughput of every registered worker, and the backlog-per-task target it implies.

Each worker runs its least-privilege scenario (tests/iam/scenarios/) a few times as its own IAM user;
the wall and CPU time of each handler are recorded. One task handles `concurrency` messages at once, so
it clears about `concurrency / p50 wall` messages per second while its handlers wait on I/O, at most
`vCPU / p50 CPU` when they compute (a Fargate task of 512 CPU units has half a vCPU), and never more than
the runtime itself can receive and delete: that ceiling is measured in the same run (bench/consumer.py's
runtime loop, a no-op stage). The backlog-per-task target is what one task clears within the latency
target (infra/sizing.py):

    target = min(concurrency / p50 wall, vCPU / p50 CPU, runtime ceiling) x LATENCY_TARGET_SECONDS

    python bench/sizing.py [--runs 3] [--write]    # --write updates infra/sizing.json

On moto every figure is the emulator's (CPU-bound, one process): read the ratios and the method; on AWS
re-run it against a real endpoint or set `-c fleet:<worker>:backlogTarget=N`. Prints a table, then one
JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobotocore.session import get_session

import shared.clients
from bench.consumer import measure, runtime_loop
from infra.model import services
from infra.sizing import LATENCY_TARGET_SECONDS, MEASURED
from shared.app import open_services
from shared.emulator import EmbeddedAws
from shared.logs import configure_logging
from shared.metrics import Metrics
from shared.registry import Registry, discover
from shared.settings import load_settings
from tests.iam.harness import IamEmulator, exercise
from tests.iam.scenarios import load_all


async def runtime_ceiling(messages: int) -> float:
    """Messages per second one runtime task receives, handles (no-op) and deletes on this emulator."""
    with EmbeddedAws(mode="process") as emulator:
        settings = load_settings(endpoint_url=emulator.url, metrics_mode="emf")
        async with open_services(settings, pool_size=60) as svc:
            svc.metrics = Metrics("emf", "Fleet", stream=io.StringIO())
            await measure(svc, runtime_loop, 100, 50)  # warm-up
            return float((await measure(svc, runtime_loop, messages, 50))["rate"])


async def handler_times(registry: Registry, runs: int) -> dict[str, list[tuple[float, float]]]:
    scenarios = load_all()
    out: dict[str, list[tuple[float, float]]] = {}
    iam = IamEmulator().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in registry.names():
                if name not in scenarios:
                    continue
                registered = scenarios[name]
                needed = Registry.of([registry.get(name), *(registry.get(n) for n in registered.needs)])
                out[name] = []
                for _ in range(runs):
                    outcome = await exercise(iam, needed, registry.get(name), registered.run, Path(tmp))
                    if not outcome.passed:
                        raise SystemExit(f"{name}'s scenario failed: {outcome.error!r} {outcome.denied}")
                    out[name] += outcome.durations
    finally:
        iam.stop()
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="scenario runs per worker")
    parser.add_argument("--ceiling-messages", type=int, default=600)
    parser.add_argument("--task-cpu", type=int, default=512, help="Fargate CPU units of a task (infra default)")
    parser.add_argument("--write", action="store_true", help=f"update {MEASURED.relative_to(Path.cwd())}")
    args = parser.parse_args()
    configure_logging("WARNING", "json", io.StringIO())
    # Every run opens its own clients: share botocore's parsed models, as tests/iam/conftest.py does.
    loader = get_session().get_component("data_loader")

    def session(*a: Any, **k: Any) -> Any:
        fresh = get_session(*a, **k)
        fresh.register_component("data_loader", loader)
        return fresh

    shared.clients.get_session = session  # type: ignore[assignment]
    registry = discover()
    ceiling = asyncio.run(runtime_ceiling(args.ceiling_messages))
    times = asyncio.run(handler_times(registry, args.runs))
    settings = load_settings()
    rows: dict[str, dict[str, float]] = {}
    vcpu = args.task_cpu / 1024
    print(f"{'worker':<12}{'handlers':>9}{'p50 ms':>8}{'p90 ms':>8}{'cpu ms':>8}{'conc':>6}{'msgs/s':>9}{'target':>8}")
    for service in services(registry, settings):
        measured = times.get(service.name, [])
        if not measured:
            print(f"{service.name:<12}{'(no scenario: infra/sizing.py floor)':>50}")
            continue
        walls = sorted(w for w, _ in measured)
        p50, p90 = statistics.median(walls), walls[min(len(walls) - 1, int(len(walls) * 0.9))]
        cpu = max(statistics.median(c for _, c in measured), 1e-4)
        rate = min(service.tuning.concurrency / p50, vcpu / cpu, ceiling)
        target = max(1, round(rate * LATENCY_TARGET_SECONDS))
        r = rows[service.name] = {
            "handlers": len(walls),
            "p50_ms": round(p50 * 1000, 1),
            "p90_ms": round(p90 * 1000, 1),
            "cpu_ms": round(cpu * 1000, 1),
            "concurrency": service.tuning.concurrency,
            "msgs_per_s": round(rate, 1),
            "backlog_target": target,
        }
        print(
            f"{service.name:<12}{r['handlers']:>9.0f}{r['p50_ms']:>8.1f}{r['p90_ms']:>8.1f}{r['cpu_ms']:>8.1f}"
            f"{r['concurrency']:>6.0f}{r['msgs_per_s']:>9.1f}{r['backlog_target']:>8.0f}"
        )
    print(
        f"runtime ceiling (no-op stage, one task): {ceiling:.1f} msgs/s; task {vcpu:g} vCPU; "
        f"latency target {LATENCY_TARGET_SECONDS} s"
    )
    figures = {"runtime_ceiling_msgs_per_s": round(ceiling, 1), "task_vcpu": vcpu, "workers": rows}
    if args.write:
        MEASURED.write_text(
            json.dumps(
                {
                    "measured_by": "python bench/sizing.py --write (moto on a shared 2-core machine)",
                    "latency_target_seconds": LATENCY_TARGET_SECONDS,
                    **figures,
                },
                indent=2,
            )
            + "\n"
        )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
