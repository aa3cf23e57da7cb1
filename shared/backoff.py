"""Exponential backoff with jitter, in whole seconds (SQS visibility takes integers)."""

from __future__ import annotations

import math
import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> int:
    """Delay before attempt `attempt + 1`: base·2^(attempt-1) plus up to 25 % jitter, capped.

    The jitter is bounded below the doubling, so each delay is strictly longer than the last until the
    cap: consumers retrying together spread out, yet a retried message is never retried sooner.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    exp = base * 2 ** (attempt - 1)
    jitter = (rng or random).uniform(0, exp * 0.25)
    return max(1, min(math.ceil(cap), math.floor(exp + jitter))) if base > 0 else 0
