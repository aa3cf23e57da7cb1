"""What a finished job adds up to: duration, usage and cost, computed once from the validated event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers.finalizer.cost import calculate_cost
from workers.finalizer.models import FinalEvent, FinalStatus
from workers.finalizer.status import determine_final_status, stage_statuses


@dataclass(frozen=True)
class Summary:
    execution_id: str
    final_status: FinalStatus
    started_at: datetime | None
    completed_at: datetime
    # None when the event has no start time: a made-up 0 would drag the duration metric down.
    duration_seconds: float | None
    transcription_seconds: float
    tokens_used: int
    documents_generated: int
    document_size_bytes: int | None
    cost_usd: Decimal
    stages: dict[str, str]

    @classmethod
    def of(cls, event: FinalEvent, *, now: datetime | None = None) -> Summary:
        results = event.processing_results
        completed = (
            event.timestamps.completed_at
            or (event.error.timestamp if event.error else None)
            or now
            or datetime.now(UTC)
        )
        started = event.timestamps.started_at
        duration = max(0.0, (completed - started).total_seconds()) if started else None
        transcription = results.get("transcription")
        transcription_seconds = (transcription.duration_seconds or 0.0) if transcription else 0.0
        tokens = sum(r.tokens_used or 0 for r in results.values())
        documents = sum(len(r.documents_generated or []) for r in results.values())
        sizes = [r.document_size_bytes for r in results.values() if r.document_size_bytes is not None]
        return cls(
            execution_id=event.execution_id,
            final_status=determine_final_status(event),
            started_at=started,
            completed_at=completed,
            duration_seconds=round(duration, 3) if duration is not None else None,
            transcription_seconds=transcription_seconds,
            tokens_used=tokens,
            documents_generated=documents,
            document_size_bytes=sum(sizes) if sizes else None,
            cost_usd=calculate_cost(transcription_seconds, tokens),
            stages=dict(stage_statuses(event)),
        )

    def processing_metrics(self) -> dict[str, Any]:
        """The `processing_metrics` map of the tracking item (DynamoDB numbers must be Decimal)."""
        metrics: dict[str, Any] = {
            "transcription_duration_seconds": Decimal(str(self.transcription_seconds)),
            "tokens_used": self.tokens_used,
            "documents_generated": self.documents_generated,
            "stage_statuses": self.stages,
        }
        if self.document_size_bytes is not None:
            metrics["document_size_bytes"] = self.document_size_bytes
        return metrics


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def number(value: float | Decimal) -> int | float:
    """JSON-friendly: 7380 rather than 7380.0, as in the seed's output."""
    as_float = float(value)
    return int(as_float) if as_float.is_integer() else as_float
