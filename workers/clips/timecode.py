"""Segment times: `HH:MM:SS` or `HH:MM:SS.mmm`, parsed strictly, held as whole milliseconds."""

from __future__ import annotations

import re

_TIME = re.compile(r"(\d{2}):([0-5]\d):([0-5]\d)(?:\.(\d{1,3}))?")


def parse_time(value: object) -> int:
    """`"01:02:03.5"` → 3723500 ms. Anything else (numbers, `1:02:03`, `00:61:00`, …) is refused."""
    if value is None:
        raise ValueError("missing (expected a time HH:MM:SS(.mmm))")
    if not isinstance(value, str):
        raise ValueError(f"expected a time string HH:MM:SS(.mmm), got {type(value).__name__}")
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a time HH:MM:SS(.mmm)")
    hours, minutes, seconds, fraction = match.groups()
    millis = int((fraction or "0").ljust(3, "0"))
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + millis


def format_ms(ms: int) -> str:
    """3723500 → `"01:02:03.500"`."""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def hhmmss(seconds: float) -> str:
    """A clip's `duration` as the seed stores it: `"00:02:15"` (rounded to the nearest second)."""
    whole = int(seconds + 0.5)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
