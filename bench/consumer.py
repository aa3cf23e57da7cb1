"""Consumer throughput: the fleet runtime vs a raw batched loop (ceiling) vs a naive loop (floor).

All three consume the same kind of message from a fresh queue on one embedded moto server (a separate
process, so the server's CPU is not the consumer's), fed at a pace that keeps the queue depth near
`--depth` (moto's ReceiveMessage costs time linear in depth; real SQS does not). Each mode's rate is
messages fully consumed (handled and deleted) per second. The figures that matter are the ratios.

    python bench/consumer.py [--messages 1500] [--naive-messages 300] [--depth 50]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel

from bench.latency import LatencyProxy
from shared.app import open_services
from shared.emulator import EmbeddedAws
from shared.logs import configure_logging
from shared.metrics import Metrics
from shared.runtime import Worker
from shared.settings import WorkerTuning, load_settings
from shared.stage import Context, Services, parse_body


class Noop(BaseModel):
    n: int


class NoopStage:
    name = "bench"
    queue = "echo"

    def __init__(self) -> None:
        self.handled = 0

    def parse(self, body: str) -> Noop:
        return parse_body(Noop, body)

    async def handle(self, message: Noop, ctx: Context) -> None:
        self.handled += 1


class Feeder:
    """Keeps roughly `depth` messages waiting until `total` have been sent."""

    def __init__(self, services: Services, url: str, total: int, depth: int) -> None:
        self.services, self.url, self.total, self.depth = services, url, total, depth
        self.sent = 0
        self.consumed = 0

    async def prefill(self) -> None:
        await self._send_until(min(self.depth, self.total))

    async def run(self) -> None:
        while self.sent < self.total:
            if self.sent - self.consumed < self.depth:
                await self._send_until(min(self.total, self.consumed + self.depth))
            else:
                await asyncio.sleep(0.002)

    async def _send_until(self, target: int) -> None:
        while self.sent < target:
            n = min(10, target - self.sent)
            entries = [{"Id": str(i), "MessageBody": json.dumps({"n": self.sent + i})} for i in range(n)]
            await self.services.aws.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type]
            self.sent += n


async def fresh_queue(services: Services) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    return (await services.aws.sqs.create_queue(QueueName=name))["QueueUrl"]


async def raw_loop(services: Services, url: str, feeder: Feeder, **attributes: Any) -> None:
    sqs = services.aws.sqs
    while feeder.consumed < feeder.total:
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, **attributes)
        msgs = resp.get("Messages", [])
        if not msgs:
            continue
        for m in msgs:
            Noop.model_validate_json(m["Body"])
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
        await sqs.delete_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        feeder.consumed += len(msgs)


async def raw_attributes_loop(services: Services, url: str, feeder: Feeder) -> None:
    """The raw loop asking for what the runtime needs: receive count, sent time, message attributes."""
    await raw_loop(
        services,
        url,
        feeder,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
    )


async def naive_loop(services: Services, url: str, feeder: Feeder) -> None:
    sqs = services.aws.sqs
    while feeder.consumed < feeder.total:
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            Noop.model_validate_json(m["Body"])
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            feeder.consumed += 1


async def runtime_loop(services: Services, url: str, feeder: Feeder) -> None:
    stage = NoopStage()
    # Two batches in flight (FLEET_DEFAULTS__CONCURRENCY=20): a poll overlaps the previous batch's work.
    tuning = WorkerTuning(concurrency=20, wait_time_seconds=1)
    worker = Worker(stage, services, queue_url=url, dlq_url=None, tuning=tuning)
    task = asyncio.create_task(worker.run())
    while stage.handled < feeder.total:
        feeder.consumed = stage.handled
        await asyncio.sleep(0.005)
    feeder.consumed = stage.handled
    worker.stop()
    await task  # includes flushing the last deletes


Mode = Callable[[Services, str, Feeder], Awaitable[None]]


async def measure(services: Services, mode: Mode, total: int, depth: int) -> dict[str, float]:
    url = await fresh_queue(services)
    feeder = Feeder(services, url, total, depth)
    await feeder.prefill()
    feed = asyncio.create_task(feeder.run())
    started, cpu = time.perf_counter(), time.process_time()
    await mode(services, url, feeder)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await feed
    attrs = await services.aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    left = int(attrs["Attributes"]["ApproximateNumberOfMessages"]) + int(
        attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
    )
    await services.aws.sqs.delete_queue(QueueUrl=url)
    return {
        "messages": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "client_cpu": cpu / elapsed,  # share of one core the consumer process used
        "left_on_queue": left,
    }


async def run_modes(endpoint: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    settings = load_settings(endpoint_url=endpoint, metrics_mode="emf")
    async with open_services(settings, pool_size=60) as services:
        services.metrics = Metrics("emf", "Fleet", stream=io.StringIO())
        await measure(services, raw_loop, 100, args.depth)  # warm-up: imports, connections, moto caches
        results = {}
        for name, mode, total in (
            ("raw", raw_loop, args.messages),
            ("raw+attrs", raw_attributes_loop, args.messages),
            ("runtime", runtime_loop, args.messages),
            ("naive", naive_loop, args.naive_messages),
        ):
            results[name] = await measure(services, mode, total, args.depth)
    return results


async def main(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    # The runtime logs one line per message and emits EMF metrics, as in production; send them nowhere
    # visible but keep their cost in the measurement.
    configure_logging("INFO", "json", io.StringIO())
    with EmbeddedAws(mode=args.emulator) as emulator:
        figures = {"loopback": await run_modes(emulator.url, args)}
        if args.rtt_ms > 0:
            with LatencyProxy(emulator.url, args.rtt_ms) as proxy:
                figures[f"rtt_{args.rtt_ms:g}ms"] = await run_modes(proxy.url, args)
    return figures


def report(figures: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"{'network':<12}{'mode':<10}{'messages':>10}{'seconds':>10}{'msgs/s':>10}{'client cpu':>12}{'left':>6}")
    for network, results in figures.items():
        for name, r in results.items():
            print(
                f"{network:<12}{name:<10}{r['messages']:>10.0f}{r['seconds']:>10.2f}"
                f"{r['rate']:>10.1f}{r['client_cpu']:>11.0%} {r['left_on_queue']:>5.0f}"
            )
        vs_raw = results["runtime"]["rate"] / results["raw"]["rate"]
        vs_naive = results["runtime"]["rate"] / results["naive"]["rate"]
        print(
            f"{network:<12}runtime / raw = {vs_raw:.2f}x (target >= 0.9x), runtime / naive = {vs_naive:.2f}x "
            "(target >= 10x)"
        )
        out[network] = {
            "runtime_msgs_per_s": round(results["runtime"]["rate"], 1),
            "raw_msgs_per_s": round(results["raw"]["rate"], 1),
            "naive_msgs_per_s": round(results["naive"]["rate"], 1),
            "runtime_vs_raw": round(vs_raw, 3),
            "runtime_vs_naive": round(vs_naive, 2),
            "messages_lost": int(sum(r["left_on_queue"] for r in results.values())),
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--naive-messages", type=int, default=300)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--emulator", choices=["process", "thread"], default="process")
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="added round trip for the second run; 0 = off")
    figures = report(asyncio.run(main(parser.parse_args())))
    print(json.dumps(figures))
