"""The benchmarks still run: each one, at a tiny size, prints its table and ends with one JSON object whose
correctness figures hold (nothing lost, bytes intact). Their performance figures are not asserted here:
these sizes measure nothing, and the full runs are in the README. (bench/clips.py needs a 30-minute
source and bench/sizing.py replays the IAM scenarios, which tests/iam runs already.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A bench starts its own emulator (and the aggregate one, a producer process): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def bench(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 2, done.stdout  # a table, then the figures
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict)
    return figures


def test_the_consumer_benchmark_runs_and_loses_nothing() -> None:
    # Given / When the consumer benchmark runs one small round on loopback
    figures = bench("consumer.py", "--messages", "60", "--naive-messages", "20", "--rounds", "1", "--rtt-ms", "0")
    # Then every mode consumed every message, and the CPU ratio is reported
    assert figures["loopback"]["messages_lost"] == 0
    assert figures["loopback"]["runtime_cpu_vs_raw"] > 0


def test_the_stream_benchmark_runs_and_the_bytes_arrive_intact() -> None:
    # Given / When the stream benchmark moves a 32 MiB source both ways
    figures = bench("stream.py", "--sizes", "32MiB", "--rate", "200MB/s")
    # Then both variants ran, and the worker's copy has the source's SHA-256
    rows = {row["variant"]: row for row in figures["rows"]}
    assert set(rows) == {"worker", "naive"}
    assert rows["worker"]["sha256_ok"] is True and rows["worker"]["status"] == "COMPLETED"
    assert rows["worker"]["bytes"] == rows["naive"]["bytes"] == 32 * 1024 * 1024


def test_the_aggregate_benchmark_runs_and_fleet_loses_no_update() -> None:
    # Given / When the aggregate benchmark drains 400 events and runs a 3-second steady phase
    figures = bench(
        "aggregate.py", "--events", "400", "--seed-events", "100", "--rate", "200", "--seconds", "3", "--warmup", "1"
    )
    # Then fleet's effects equal the reference computation
    assert figures["fleet_lost"] == 0 and figures["fleet_entities_wrong"] == 0
    assert figures["steady_events"] > 0


def test_the_ingest_benchmark_runs_and_manifests_every_file() -> None:
    # Given / When both ingest flows take 200 files
    figures = bench("ingest.py", "--files", "200")
    # Then fleet left no file without a manifest
    assert figures["fleet_files_left_pending"] == 0
    assert figures["fleet_manifests"] >= 1
