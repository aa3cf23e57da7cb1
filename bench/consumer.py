"""Consumer throughput: the fleet runtime vs a raw batched loop (ceiling) vs a naive loop (floor).

All three consume the same kind of message from a fresh queue on one embedded moto server (a separate
process, so the server's CPU is not the consumer's), fed at a pace that keeps the queue depth near
`--depth` (moto's ReceiveMessage costs time linear in depth; real SQS does not). Each mode's rate is
messages fully consumed (handled and deleted) per second. The figures that matter are the ratios.

    python bench/consumer.py [--messages 4000] [--naive-messages 300] [--depth 50] [--rounds 3]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import statistics
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

    def __init__(self, feeder: Feeder | None = None) -> None:
        self.handled = 0
        self.feeder = feeder
        self.all_handled = asyncio.Event()

    def parse(self, body: str) -> Noop:
        return parse_body(Noop, body)

    async def handle(self, message: Noop, ctx: Context) -> None:
        self.handled += 1
        if self.feeder is not None:
            self.feeder.consumed = self.handled
            if self.handled >= self.feeder.total:
                self.all_handled.set()


class Feeder:
    """Keeps roughly `depth` messages waiting until `total` have been sent, from a child process: its CPU is
    not the consumer's (the figure that matters is the consumer's CPU per message)."""

    def __init__(self, endpoint: str, url: str, total: int, depth: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.total = total
        self._consumed = ctx.Value("i", 0)
        self._ready = ctx.Event()
        self._proc = ctx.Process(target=feed, args=(endpoint, url, total, depth, self._consumed, self._ready))

    @property
    def consumed(self) -> int:
        return int(self._consumed.value)

    @consumed.setter
    def consumed(self, value: int) -> None:
        self._consumed.value = value

    def start(self) -> None:
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("feeder did not start")

    def join(self) -> None:
        self._proc.join(60)


def feed(endpoint: str, url: str, total: int, depth: int, consumed: Any, ready: Any) -> None:
    import boto3

    sqs = boto3.client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    sent = 0

    def send_until(target: int) -> None:
        nonlocal sent
        while sent < target:
            n = min(10, target - sent)
            entries = [{"Id": str(i), "MessageBody": json.dumps({"n": sent + i})} for i in range(n)]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
            sent += n

    send_until(min(depth, total))
    ready.set()
    while sent < total:
        if sent - consumed.value < depth:
            send_until(min(total, consumed.value + depth))
        else:
            time.sleep(0.002)


async def fresh_queue(services: Services) -> tuple[str, str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    dlq = (await services.aws.sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
    return (await services.aws.sqs.create_queue(QueueName=name))["QueueUrl"], dlq


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
    stage = NoopStage(feeder)
    # Two batches in flight (FLEET_DEFAULTS__CONCURRENCY=20): a poll overlaps the previous batch's work.
    tuning = WorkerTuning(concurrency=20, wait_time_seconds=1)
    worker = Worker(stage, services, queue_url=url, dlq_url=url + "-dlq", tuning=tuning)
    task = asyncio.create_task(worker.run())
    await stage.all_handled.wait()
    worker.stop()
    await task  # includes flushing the last deletes


Mode = Callable[[Services, str, Feeder], Awaitable[None]]


async def measure(services: Services, mode: Mode, total: int, depth: int) -> dict[str, float]:
    url, dlq = await fresh_queue(services)
    assert services.settings.endpoint_url
    feeder = Feeder(services.settings.endpoint_url, url, total, depth)
    await asyncio.to_thread(feeder.start)
    started, cpu = time.perf_counter(), time.process_time()
    await mode(services, url, feeder)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await asyncio.to_thread(feeder.join)
    attrs = await services.aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    left = int(attrs["Attributes"]["ApproximateNumberOfMessages"]) + int(
        attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
    )
    await services.aws.sqs.delete_queue(QueueUrl=url)
    await services.aws.sqs.delete_queue(QueueUrl=dlq)
    return {
        "messages": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "client_cpu": cpu / elapsed,  # share of one core the consumer process used
        "cpu_ms_per_msg": cpu * 1000 / total,
        "left_on_queue": left,
    }


Rounds = dict[str, list[dict[str, float]]]  # mode -> one measurement per round


async def run_modes(endpoint: str, args: argparse.Namespace) -> Rounds:
    settings = load_settings(endpoint_url=endpoint, metrics_mode="emf")
    async with open_services(settings, pool_size=60) as services:
        services.metrics = Metrics("emf", "Fleet", stream=io.StringIO())
        await measure(services, raw_loop, 100, args.depth)  # warm-up: imports, connections, moto caches
        # Rounds interleave the modes, so a burst of load from elsewhere on the machine hits every mode of a
        # round alike; the ratios are taken within a round, and the median round is reported.
        rounds: Rounds = {}
        for _ in range(args.rounds):
            for name, mode, total in (
                ("raw", raw_loop, args.messages),
                ("raw+attrs", raw_attributes_loop, args.messages),
                ("runtime", runtime_loop, args.messages),
                ("naive", naive_loop, args.naive_messages),
            ):
                rounds.setdefault(name, []).append(await measure(services, mode, total, args.depth))
    return rounds


async def main(args: argparse.Namespace) -> dict[str, Rounds]:
    # The runtime logs one line per message and emits EMF metrics, as in production; send them nowhere
    # visible but keep their cost in the measurement.
    configure_logging("INFO", "json", io.StringIO())
    with EmbeddedAws(mode=args.emulator) as emulator:
        figures = {"loopback": await run_modes(emulator.url, args)}
        if args.rtt_ms > 0:
            with LatencyProxy(emulator.url, args.rtt_ms) as proxy:
                figures[f"rtt_{args.rtt_ms:g}ms"] = await run_modes(proxy.url, args)
    return figures


def median_ratio(rounds: Rounds, figure: str, mode: str, baseline: str) -> float:
    return statistics.median(
        m[figure] / b[figure] for m, b in zip(rounds[mode], rounds[baseline], strict=True) if b[figure] > 0
    )


def report(figures: dict[str, Rounds]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(
        f"{'network':<12}{'mode':<10}{'messages':>10}{'seconds':>10}{'msgs/s':>10}{'client cpu':>12}"
        f"{'cpu ms/msg':>12}{'left':>6}   (medians of {len(next(iter(figures.values()))['raw'])} rounds)"
    )
    for network, rounds in figures.items():
        results = {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()
        }
        for name, r in results.items():
            left = sum(run["left_on_queue"] for run in rounds[name])
            print(
                f"{network:<12}{name:<10}{r['messages']:>10.0f}{r['seconds']:>10.2f}"
                f"{r['rate']:>10.1f}{r['client_cpu']:>11.0%} {r['cpu_ms_per_msg']:>11.3f} {left:>5.0f}"
            )
        vs_raw = median_ratio(rounds, "rate", "runtime", "raw")
        vs_naive = median_ratio(rounds, "rate", "runtime", "naive")
        cpu_vs_raw = median_ratio(rounds, "cpu_ms_per_msg", "runtime", "raw")
        cpu_each = [
            round(rt["cpu_ms_per_msg"] / raw["cpu_ms_per_msg"], 2)
            for rt, raw in zip(rounds["runtime"], rounds["raw"], strict=True)
        ]
        print(
            f"{network:<12}runtime / raw = {vs_raw:.2f}x (target >= 0.9x), runtime / naive = {vs_naive:.2f}x "
            f"(target >= 10x), runtime CPU per message / raw = {cpu_vs_raw:.2f}x (target <= 1.2x; rounds {cpu_each})"
        )
        out[network] = {
            "runtime_msgs_per_s": round(results["runtime"]["rate"], 1),
            "raw_msgs_per_s": round(results["raw"]["rate"], 1),
            "naive_msgs_per_s": round(results["naive"]["rate"], 1),
            "runtime_vs_raw": round(vs_raw, 3),
            "runtime_vs_naive": round(vs_naive, 2),
            "cpu_ms_per_msg": {name: round(r["cpu_ms_per_msg"], 3) for name, r in results.items()},
            "runtime_cpu_vs_raw": round(cpu_vs_raw, 3),
            "runtime_cpu_vs_raw_rounds": cpu_each,
            "messages_lost": int(sum(r["left_on_queue"] for runs in rounds.values() for r in runs)),
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--naive-messages", type=int, default=300)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode, interleaved; medians reported")
    parser.add_argument("--emulator", choices=["process", "thread"], default="process")
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="added round trip for the second run; 0 = off")
    figures = report(asyncio.run(main(parser.parse_args())))
    print(json.dumps(figures))
