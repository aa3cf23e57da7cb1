"""What the clips worker owns: its queue (Begin Clip Generation events and the clip jobs they fan out
into), the clips table of seed 002, and the default-bus rule that routes the event to the queue. The
media bucket (sources and clips) belongs to the finalizer's declarations and is imported from there."""

from __future__ import annotations

from shared.resources import Queue, Rule, Table
from workers.finalizer.resources import MEDIA

CLIPS = Queue("clips", "fleet-clips")
CLIPS_TABLE = Table("clips", "fleet-clips", hash_key="pk", range_key="sk")
BEGIN_RULE = Rule(
    "clips-begin",
    "fleet-clips-begin",
    pattern={"detail-type": ["Begin Clip Generation"]},
    target=CLIPS,
)

__all__ = ["BEGIN_RULE", "CLIPS", "CLIPS_TABLE", "MEDIA"]
