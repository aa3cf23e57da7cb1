"""Metrics as CloudWatch Embedded Metric Format lines (default) or batched PutMetricData calls.

EMF costs no API call: the awslogs driver ships stdout to CloudWatch Logs, which extracts the metrics.
`cloudwatch` mode is for places without that pipeline (and for reading metrics back from an emulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from types_aiobotocore_cloudwatch import CloudWatchClient
    from types_aiobotocore_cloudwatch.type_defs import MetricDatumTypeDef

log = logging.getLogger("fleet.metrics")

Unit = Literal["Count", "Seconds", "Milliseconds", "Bytes", "None", "Percent", "Megabits/Second"]
PUT_BATCH = 1000  # PutMetricData accepts up to 1,000 metrics per call
EMF_VALUES = 100  # values per metric in one EMF document


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: Unit = "Count"
    dimensions: Mapping[str, str] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


class Metrics:
    """A sink for metrics; `emit` never raises — metrics are nice-to-have.

    Both modes buffer: `emit` only appends. A timer flushes every `flush_every` seconds (1 s for EMF, 10 s
    for PutMetricData), so does a full buffer and `close()` at shutdown: per message, a metric costs a list
    append, not a JSON document or an API call.
    """

    def __init__(
        self,
        mode: Literal["emf", "cloudwatch", "off"],
        namespace: str,
        *,
        cloudwatch: CloudWatchClient | None = None,
        stream: IO[str] | None = None,
        flush_every: float | None = None,
    ) -> None:
        if mode == "cloudwatch" and cloudwatch is None:
            raise ValueError("metrics mode 'cloudwatch' needs a CloudWatch client")
        self.mode = mode
        self.namespace = namespace
        self._cloudwatch = cloudwatch
        self._stream = stream
        self._buffer: list[Metric] = []
        self._flush_every = flush_every if flush_every is not None else (1.0 if mode == "emf" else 10.0)
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Flush on a timer too: an idle worker must not keep its last metrics buffered."""
        if self.mode != "off" and self._timer is None:
            self._timer = asyncio.create_task(self._flush_periodically(), name="fleet-metrics")

    async def close(self) -> None:
        """Stop the timer and flush what is buffered (process shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self.flush()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            if self._buffer:
                await self.flush()

    async def emit(self, *metrics: Metric) -> bool:
        if self.mode == "off" or not metrics:
            return True
        self._buffer.extend(metrics)
        if len(self._buffer) >= PUT_BATCH:
            return await self.flush()
        return True

    async def flush(self) -> bool:
        if self.mode == "off" or not self._buffer:
            return True
        pending, self._buffer = self._buffer, []
        if self.mode == "emf":
            out = self._stream or sys.stdout
            for line in emf_lines(self.namespace, pending):
                print(line, file=out, flush=True)
            return True
        assert self._cloudwatch is not None
        async with self._lock:
            ok = True
            for start in range(0, len(pending), PUT_BATCH):
                chunk = pending[start : start + PUT_BATCH]
                try:
                    await self._cloudwatch.put_metric_data(
                        Namespace=self.namespace, MetricData=[_datum(m) for m in chunk]
                    )
                except Exception as exc:
                    ok = False
                    log.warning("metrics not recorded", extra={"error": str(exc), "dropped": len(chunk)})
            return ok


def _datum(metric: Metric) -> MetricDatumTypeDef:
    return {
        "MetricName": metric.name,
        "Value": metric.value,
        "Unit": metric.unit,
        "Timestamp": datetime.fromtimestamp(metric.timestamp, UTC),
        "Dimensions": [{"Name": k, "Value": v} for k, v in metric.dimensions.items()],
    }


def emf_lines(namespace: str, metrics: tuple[Metric, ...] | list[Metric]) -> list[str]:
    """EMF documents: one per distinct dimension set, each metric's values as an array (EMF takes up to
    100 values per metric in a document; CloudWatch counts each as a data point)."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, tuple[Unit, list[float]]]] = {}
    first: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in metrics:
        dims = tuple(sorted(metric.dimensions.items()))
        first.setdefault(dims, metric.timestamp)
        group = groups.setdefault(dims, {})
        group.setdefault(metric.name, (metric.unit, []))[1].append(metric.value)
    lines = []
    for dims, group in groups.items():
        for start in range(0, max(len(v) for _, v in group.values()), EMF_VALUES):
            names = {name: (unit, values[start : start + EMF_VALUES]) for name, (unit, values) in group.items()}
            names = {name: uv for name, uv in names.items() if uv[1]}
            doc: dict[str, Any] = {
                "_aws": {
                    "Timestamp": int(first[dims] * 1000),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": namespace,
                            "Dimensions": [[k for k, _ in dims]],
                            "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in names.items()],
                        }
                    ],
                },
                **dict(dims),
            }
            for name, (_, values) in names.items():
                doc[name] = values[0] if len(values) == 1 else values
            lines.append(json.dumps(doc))
    return lines
