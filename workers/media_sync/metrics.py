"""The seed's six metrics (namespace `Fleet`), each with the `Environment` dimension; `SyncFailures` also has
`ErrorType` (the failure's code: STREAM_DROPPED, UNSAFE_URL, PROVIDER_REFUSED, ...)."""

from __future__ import annotations

from shared.metrics import Metric


def synced(environment: str, *, size: int, seconds: float, first_byte_seconds: float | None) -> list[Metric]:
    dims = {"Environment": environment}
    seconds = max(seconds, 1e-6)
    metrics = [
        Metric("VideosSynced", 1, "Count", dims),
        Metric("BytesTransferred", size, "Bytes", dims),
        Metric("TransferDuration", seconds, "Seconds", dims),
        Metric("TransferThroughput", size * 8 / 1_000_000 / seconds, "Megabits/Second", dims),
    ]
    if first_byte_seconds is not None:
        metrics.append(Metric("TimeToFirstByte", first_byte_seconds, "Seconds", dims))
    return metrics


def failed(environment: str, error_type: str) -> list[Metric]:
    return [Metric("SyncFailures", 1, "Count", {"Environment": environment, "ErrorType": error_type})]


NAMES = (
    "VideosSynced",
    "BytesTransferred",
    "TransferDuration",
    "TransferThroughput",
    "TimeToFirstByte",
    "SyncFailures",
)
