"""What becomes of a message once its handler is done: a pure decision, testable without SQS.

    fate = decide(error, attempt=3, tuning=tuning, visibility_left=41_000.0)

The settler (`shared/settler.py`) then applies it with SQS calls. Only handler failures count as attempts
(`attempt` is 1 for the first failure-free delivery, however often the message was released at shutdown).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from shared.backoff import backoff_delay
from shared.errors import FleetError, Retry
from shared.settings import WorkerTuning

# SQS keeps a message hidden at most 12 h after it was received; ask for a little less than what is left,
# so the request still fits when it reaches SQS.
VISIBILITY_LIMIT = 43_200
VISIBILITY_MARGIN = 5


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"  # deleted
    RETRYING = "retrying"  # hidden for `delay` seconds, then delivered again
    DEAD_LETTERED = "dead_lettered"  # sent to the DLQ with the reason, then deleted
    RELEASED = "released"  # given back unhandled at shutdown: visible again at once, no attempt used
    LOST = "lost"  # SQS no longer knows our receipt (deleted elsewhere, or redelivered): nothing to settle

    @property
    def label(self) -> str:
        return self.value.replace("_", "-")


class MessageLost(FleetError):
    """The heartbeat learned that this receipt is no longer ours; the handler was stopped."""

    code = "LOST"


@dataclass(frozen=True)
class Fate:
    outcome: Outcome
    error: FleetError | None = None
    delay: int | None = None  # RETRYING: seconds until the next delivery
    note: str | None = None  # e.g. why the delay is shorter than asked


def visibility_left(received_at: float, now: float) -> float:
    """Seconds a message received at `received_at` (wall clock) may still be kept hidden."""
    return max(0.0, VISIBILITY_LIMIT - VISIBILITY_MARGIN - (now - received_at))


def decide(
    error: FleetError | None,
    *,
    attempt: int,
    tuning: WorkerTuning,
    visibility_left: float,
    rng: random.Random | None = None,
) -> Fate:
    if error is None:
        return Fate(Outcome.SUCCEEDED)
    if isinstance(error, MessageLost):
        return Fate(Outcome.LOST, error)
    if not isinstance(error, Retry):
        return Fate(Outcome.DEAD_LETTERED, error)
    if attempt >= tuning.max_attempts:
        gave_up = type(error)(f"gave up after {attempt} attempts: {error.reason}", code=error.code)
        return Fate(Outcome.DEAD_LETTERED, gave_up)
    asked = (
        error.delay if error.delay is not None else backoff_delay(attempt, tuning.backoff_base, tuning.backoff_max, rng)
    )
    delay = max(0, math.ceil(asked))
    cap = math.floor(visibility_left)
    if delay > cap:
        note = f"asked {asked:g}s, capped at {cap}s: SQS hides a message at most 12 h after it was received"
        return Fate(Outcome.RETRYING, error, delay=cap, note=note)
    return Fate(Outcome.RETRYING, error, delay=delay)
