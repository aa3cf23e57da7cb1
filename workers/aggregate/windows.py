"""An entity's rolling windows: daily buckets, and the 7/14/30-day figures computed from them. Pure code.

- Each event counts on its UTC day. The windows end on the day of the newest event seen for the entity
  (`window_end`): the N-day window is the N days up to and including it. So late and out-of-order events
  land in the right bucket, and the numbers do not depend on the order events arrive in.
- Buckets older than 30 days before `window_end` are dropped; an event that old no longer counts.
- `avg_rating` is the true mean of the ratings in the 30-day window (sum and count per day), to 4 places.
- Each source (a shard) has a watermark: the position of the last record applied. A record at or below it
  was applied already (a replay after a crash or a lease take-over) and is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from workers.aggregate.events import Contribution, EntityKey, Snapshot

WINDOW_DAYS = 30
WINDOWS = (7, 14, 30)
RATING_PLACES = Decimal("0.0001")
DEFAULT_HEALTH = Decimal(100)  # the seed's default for an entity without a health update


@dataclass(frozen=True)
class Day:
    sessions: int = 0
    ib_calls: int = 0
    rating_sum: Decimal = Decimal(0)
    rating_count: int = 0

    def plus(self, c: Contribution) -> Day:
        return Day(
            self.sessions + c.sessions,
            self.ib_calls + c.ib_calls,
            self.rating_sum + (c.rating if c.rating is not None else 0),
            self.rating_count + (c.rating is not None),
        )


@dataclass(frozen=True)
class Pending:
    """A contribution waiting to be written, with the record it came from."""

    source: str  # the shard
    position: str  # the record's fixed-width sequence number
    contribution: Contribution


@dataclass(frozen=True)
class EntityState:
    key: EntityKey
    ver: int = 0  # 0: no item yet
    days: dict[date, Day] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)  # source -> position of its last record applied
    newest: datetime | None = None
    events: int = 0
    health: Snapshot | None = None
    supply: Snapshot | None = None
    alerted: dict[str, float] = field(default_factory=dict)  # rule -> when it last fired (epoch s)
    outbox: dict[str, str] = field(default_factory=dict)  # rule -> alert (JSON) not yet confirmed sent

    @property
    def window_end(self) -> date | None:
        return self.newest.date() if self.newest else None


def apply(state: EntityState, pending: Iterable[Pending]) -> tuple[EntityState, int]:
    """The state with `pending` applied (records at or below their source's watermark skipped) and how many
    were applied."""
    fresh = [p for p in pending if p.position > state.marks.get(p.source, "")]
    if not fresh:
        return state, 0
    marks = dict(state.marks)
    for p in fresh:
        marks[p.source] = max(marks.get(p.source, ""), p.position)
    newest = max([c.at for c in (p.contribution for p in fresh)] + ([state.newest] if state.newest else []))
    oldest_kept = newest.date() - timedelta(days=WINDOW_DAYS - 1)
    days = {d: v for d, v in state.days.items() if d >= oldest_kept}
    health, supply = state.health, state.supply
    for p in fresh:
        c = p.contribution
        day = c.at.date()
        if day >= oldest_kept and (c.sessions or c.ib_calls or c.rating is not None):
            days[day] = days.get(day, Day()).plus(c)
        if c.health is not None and (health is None or c.health.order > health.order):
            health = c.health
        if c.supply is not None and (supply is None or c.supply.order > supply.order):
            supply = c.supply
    new = replace(
        state, days=days, marks=marks, newest=newest, events=state.events + len(fresh), health=health, supply=supply
    )
    return new, len(fresh)


def window(state: EntityState, days: int) -> list[Day]:
    end = state.window_end
    if end is None:
        return []
    start = end - timedelta(days=days - 1)
    return [v for d, v in state.days.items() if start <= d <= end]


def summary(state: EntityState) -> dict[str, Any]:
    """The contract's attributes (and a few more), as stored on the entity's item."""
    out: dict[str, Any] = {}
    for n in WINDOWS:
        out[f"sessions_{n}d"] = sum(d.sessions for d in window(state, n))
    for n in (7, 14):
        out[f"ib_calls_{n}d"] = sum(d.ib_calls for d in window(state, n))
    month = window(state, WINDOW_DAYS)
    total = sum((d.rating_sum for d in month), Decimal(0))
    count = sum(d.rating_count for d in month)
    out["avg_rating"] = (total / count).quantize(RATING_PLACES, ROUND_HALF_EVEN) if count else Decimal(0)
    out["ratings_30d"] = count
    out["health_score"] = DEFAULT_HEALTH
    if state.health is not None:
        out.update(dict(state.health.fields))
        out["health_as_of"] = state.health.at.isoformat()
    if state.supply is not None:
        out.update(dict(state.supply.fields))
        out["supply_as_of"] = state.supply.at.isoformat()
    out["window_end"] = state.window_end.isoformat() if state.window_end else None
    out["events"] = state.events
    return out
