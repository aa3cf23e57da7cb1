"""The two messages on `fleet-clips`, and the segment rules.

- the **Begin Clip Generation** event (seed 002) as EventBridge delivers it: `{"id", "source",
  "detail-type": "Begin Clip Generation", "detail": {"tenantId", "episodeId", "clips"?}}`;
- a **clip job**, one per clip, which the event fans out into: `{"kind": "clip", "tenantId", "episodeId",
  "clipId", "requestId", "videoKey", "segments"}`.

Anything else on the queue is poison. Segment times are checked when the clip is rendered, so a bad
segment fails its own clip (`INVALID_SEGMENT`), never its siblings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.envelope import unwrap
from shared.errors import Poison
from shared.stage import validate
from workers.clips.errors import InvalidSegment
from workers.clips.timecode import format_ms, parse_time

# Ids become parts of DynamoDB keys (`<tenant>#<episode>`, `clip#<clip>`) and S3 keys
# (`<episodeId>/clips/<clipId>/clip.mp4`): no separators, no dot-dot, nothing to escape.
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Segment(BaseModel):
    """A segment as the producer wrote it; its times are parsed (strictly) at render time."""

    model_config = ConfigDict(extra="ignore")

    startTime: Any = None
    endTime: Any = None
    speaker: str | None = Field(None, max_length=256)


class ClipRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    clipId: Ident
    segments: list[Segment] = Field(default_factory=list, max_length=1000)


class BeginDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenantId: Ident
    episodeId: Ident
    clips: list[ClipRequest] | None = Field(None, max_length=10_000)


class BeginClipGeneration(BaseModel):
    """The EventBridge envelope (`account`, `region`, `resources`, `time`... are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(None, max_length=128)
    source: str = Field(max_length=256)
    detail_type: Literal["Begin Clip Generation"] = Field(alias="detail-type")
    detail: BeginDetail


class ClipJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["clip"]
    tenantId: Ident
    episodeId: Ident
    clipId: Ident
    requestId: str = Field(min_length=1, max_length=128)
    videoKey: ObjectKey | None = None
    segments: list[Segment] = Field(max_length=1000)


ClipsMessage = BeginClipGeneration | ClipJob


def parse_message(body: str) -> ClipsMessage:
    data = unwrap(body)
    if isinstance(data, dict) and "detail-type" in data:
        return validate(BeginClipGeneration, data)
    if isinstance(data, dict) and data.get("kind") == "clip":
        return validate(ClipJob, data)
    raise Poison(
        'neither a "Begin Clip Generation" event (no detail-type) nor a clip job (no "kind": "clip")',
        code="INVALID",
    )


@dataclass(frozen=True)
class Span:
    """One segment of the source, in whole milliseconds."""

    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def plan_spans(segments: list[Segment], *, max_segments: int, max_clip_seconds: float) -> list[Span]:
    """Strictly parsed, ordered (start < end) segments within the caps, or `InvalidSegment`."""
    if not segments:
        raise InvalidSegment("the clip has no segments")
    if len(segments) > max_segments:
        raise InvalidSegment(f"the clip has {len(segments)} segments; at most {max_segments} are allowed")
    spans = []
    for number, segment in enumerate(segments, 1):
        try:
            start = parse_time(segment.startTime)
        except ValueError as exc:
            raise InvalidSegment(f"segment {number}: startTime: {exc}") from None
        try:
            end = parse_time(segment.endTime)
        except ValueError as exc:
            raise InvalidSegment(f"segment {number}: endTime: {exc}") from None
        if end <= start:
            raise InvalidSegment(
                f"segment {number}: endTime {format_ms(end)} is not after startTime {format_ms(start)}"
            )
        spans.append(Span(start, end))
    total = sum(s.duration_ms for s in spans)
    if total > max_clip_seconds * 1000:
        raise InvalidSegment(
            f"the clip is {format_ms(total)} long; at most {format_ms(int(max_clip_seconds * 1000))} is allowed"
        )
    return spans


def check_within(spans: list[Span], source_seconds: float | None) -> None:
    """Every segment must end inside the source."""
    if source_seconds is None:
        raise InvalidSegment("the source's duration is unknown, so its segments cannot be checked")
    source_ms = round(source_seconds * 1000)
    for number, span in enumerate(spans, 1):
        if span.end_ms > source_ms:
            raise InvalidSegment(
                f"segment {number}: endTime {format_ms(span.end_ms)} is past the end of the source "
                f"({format_ms(source_ms)})"
            )
