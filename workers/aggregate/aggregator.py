"""Events folded in memory, written once per entity per flush, acknowledged once durable.

- `submit(records)` drops events whose `event_id` was seen with another record (in memory, then in
  `fleet-events-seen`), adds each event's contributions to its entities' pending lists and returns a future
  that resolves when every entity the batch touched has been written and its event ids recorded. The
  consumer checkpoints the batch only then.
- Every `flush_interval_seconds`, each entity with at least `flush_min_events` pending events, or whose
  oldest pending event has waited `max_delay_seconds`, is written: one compare-and-set UpdateItem for all its
  pending events, whatever their days (`store.py`). Busy entities are written every flush; quiet ones
  collect several events first; one that other processes write too (its item holds records of shards this one
  does not read, or it lost a race lately) waits `max_delay_seconds` too, and is read again and written first
  in its flush, so races stay rare. `drain()` writes everything at once.
- An entity's write skips records it already holds (watermarks), so replays count once; a write that loses a
  race recomputes from the item it gets back; one that fails is retried at the next flush. Nothing is dropped
  and nothing is acknowledged before it is durable.
- After a write, the alerts it fired are sent. They leave the entity's outbox with its next write; an entity
  not written again within `max_delay_seconds` gets a write of its own for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from shared.metrics import Metric
from shared.stage import Services
from workers.aggregate.alerts import AlertSender, fire, stale_outbox
from workers.aggregate.config import AggregateConfig
from workers.aggregate.events import EntityKey, Event, contributions
from workers.aggregate.resources import ALERTS, METRICS, SEEN
from workers.aggregate.store import Conflict, Marker, MetricsTable, SeenEvents
from workers.aggregate.windows import EntityState, Pending, apply, summary

log = logging.getLogger("fleet.aggregate")

MAX_CONFLICTS = 8  # compare-and-set attempts per entity per flush before it waits for the next flush
CONTENDED_SECONDS = 60.0  # an entity last seen shared with other writers this long ago is treated as shared


class Incoming(NamedTuple):
    """An event and the record that carried it."""

    source: str  # shard id
    position: str  # fixed-width sequence number
    ident: str  # shard:sequence
    event: Event


@dataclass
class _EntityPending:
    since: float
    items: dict[tuple[str, str], Pending] = field(default_factory=dict)
    batches: set[int] = field(default_factory=set)

    def merge(self, other: _EntityPending) -> None:
        for k, v in other.items.items():
            self.items.setdefault(k, v)
        self.batches |= other.batches
        self.since = min(self.since, other.since)


@dataclass
class _Batch:
    future: asyncio.Future[None]
    waiting: int
    markers: list[Marker]


@dataclass
class AggregateStats:
    events: int = 0  # accepted into the fold
    duplicates: int = 0  # dropped: their event_id was counted with another record
    writes: int = 0  # entity UpdateItems that succeeded
    conflicts: int = 0  # compare-and-set races lost (and recomputed)
    write_errors: int = 0
    flushes: int = 0
    markers: int = 0
    alerts_sent: int = 0


class Aggregator:
    def __init__(self, services: Services, config: AggregateConfig, *, worker: str) -> None:
        settings = services.settings
        ddb = services.aws.dynamodb
        self.config = config
        self.worker = worker
        self.table = MetricsTable(ddb, settings.name_of(METRICS))
        self.seen = SeenEvents(ddb, settings.name_of(SEEN), retention_days=config.seen_retention_days)
        self.alerts = AlertSender(services.aws.events, settings.name_of(ALERTS), services.metrics, worker)
        self.metrics = services.metrics
        self.stats = AggregateStats()
        self._pending: dict[EntityKey, _EntityPending] = {}
        self._batches: dict[int, _Batch] = {}
        self._ids = itertools.count()
        self._recent: OrderedDict[str, str] = OrderedDict()  # event id -> record ident
        self._cache: OrderedDict[EntityKey, EntityState] = OrderedDict()
        self._events_pending = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._flusher: asyncio.Task[None] | None = None
        self._failures = 0
        # alerts sent but still in their entity's outbox: entity -> (since, rule -> alert)
        self._sent: dict[EntityKey, tuple[float, dict[str, str]]] = {}
        self._contended: dict[EntityKey, float] = {}  # entity -> when it was last seen shared with other writers
        self._sources: set[str] = set()  # the shards this process has read

    @property
    def pending_events(self) -> int:
        return self._events_pending

    # --- in ------------------------------------------------------------------------------------------

    async def submit(self, records: Sequence[Incoming]) -> asyncio.Future[None]:
        while self._events_pending >= self.config.max_pending_events:
            self._room.clear()
            self._wake.set()
            await self._room.wait()
        accepted = await self._dedupe(records)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch_id = next(self._ids)
        touched: set[EntityKey] = set()
        now = time.monotonic()
        self._sources.update(r.source for r in records)
        for r in accepted:
            for c in contributions(r.event):
                pending = self._pending.get(c.entity)
                if pending is None:
                    pending = self._pending[c.entity] = _EntityPending(since=now)
                if (r.source, r.position) not in pending.items:
                    pending.items[(r.source, r.position)] = Pending(r.source, r.position, c)
                    self._events_pending += 1
                pending.batches.add(batch_id)
                touched.add(c.entity)
        self.stats.events += len(accepted)
        markers = [Marker(r.event.event_id, r.ident) for r in accepted if r.event.event_id]
        if touched:
            self._batches[batch_id] = _Batch(future, len(touched), markers)
            self._start_flusher()
            if self._events_pending >= self.config.max_pending_events:
                self._wake.set()
        else:
            future.set_result(None)
        return future

    async def _dedupe(self, records: Sequence[Incoming]) -> list[Incoming]:
        """Drop events whose id was counted with another record. A replay of the same record is kept: its
        entities' watermarks make it count once."""
        dropped: set[int] = set()
        unknown: list[tuple[int, Incoming]] = []
        for i, r in enumerate(records):
            event_id = r.event.event_id
            if event_id is None:
                continue
            first = self._recent.get(event_id)
            if first is None:
                self._remember(event_id, r.ident)  # claimed now: a copy in this batch or another is a duplicate
                unknown.append((i, r))
            elif first != r.ident:
                dropped.add(i)
        if unknown:
            try:
                seen = await self.seen.check(r.event.event_id for _, r in unknown if r.event.event_id)
            except BaseException:
                for _, r in unknown:
                    if r.event.event_id and self._recent.get(r.event.event_id) == r.ident:
                        del self._recent[r.event.event_id]
                raise
            for i, r in unknown:
                assert r.event.event_id is not None
                first = seen.get(r.event.event_id)
                if first is not None and first != r.ident:
                    self._remember(r.event.event_id, first)
                    dropped.add(i)
        self.stats.duplicates += len(dropped)
        return [r for i, r in enumerate(records) if i not in dropped]

    def _remember(self, event_id: str, ident: str) -> None:
        self._recent[event_id] = ident
        self._recent.move_to_end(event_id)
        while len(self._recent) > self.config.remembered_event_ids:
            self._recent.popitem(last=False)

    # --- flushing ------------------------------------------------------------------------------------

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="fleet-aggregate-flush")

    async def _flush_loop(self) -> None:
        """Runs while anything is pending; ends by itself when all is durable (started again by submit)."""
        while self._pending or self._batches or self._sent:
            pause = self.config.flush_interval_seconds
            if self._failures:
                pause = min(30.0, pause * 2**self._failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            await self.flush(force=self._events_pending >= self.config.max_pending_events)

    async def drain(self) -> None:
        """Write everything pending now, and return once every batch submitted so far is durable."""
        while self._pending or self._batches or self._sent:
            progress = await self.flush(force=True)
            if not progress:
                await asyncio.sleep(min(5.0, 0.2 * 2**self._failures))

    async def flush(self, *, force: bool = False) -> bool:
        """Write the entities that are due (all of them if `force`); True if anything became durable."""
        async with self._lock:
            try:
                return await self._flush(force)
            except Exception as exc:
                self._failures += 1
                log.error("flush failed; retrying", extra={"error": str(exc)[:300]}, exc_info=exc)
                return False
            finally:
                if self._events_pending < self.config.max_pending_events:
                    self._room.set()

    async def _flush(self, force: bool) -> bool:
        now = time.monotonic()
        cfg = self.config
        for key in [k for k, t in self._contended.items() if now - t >= CONTENDED_SECONDS]:
            del self._contended[key]
        due = [k for k, p in self._pending.items() if force or self._due(k, p, now)]
        taken = {k: self._pending.pop(k) for k in due}
        self._events_pending -= sum(len(p.items) for p in taken.values())
        errors_before = self.stats.write_errors
        written: list[EntityKey] = []
        outbox: dict[EntityKey, dict[str, str]] = {}
        if taken:
            started = time.monotonic()
            self.stats.flushes += 1
            limit = asyncio.Semaphore(cfg.write_concurrency)

            async def one(key: EntityKey) -> None:
                async with limit:
                    sent = await self._write(key, list(taken[key].items.values()), force=force)
                if sent is None:
                    self._put_back(key, taken[key])
                else:
                    written.append(key)
                    if sent:
                        outbox[key] = sent

            # Entities other writers share were surely changed since this process last wrote them: read them
            # again (one call) and write them at once, before the rest, rather than lose a compare-and-set race
            # on each (a failed write apiece).
            shared = [k for k in taken if k in self._contended]
            for wave in (shared, [k for k in taken if k not in self._contended]):
                await self._load([k for k in wave if k in self._contended or k not in self._cache])
                await asyncio.gather(*(one(k) for k in wave))
            await self.metrics.emit(
                Metric("FlushDuration", (time.monotonic() - started) * 1000, "Milliseconds", {"Worker": self.worker}),
                Metric("EntitiesWritten", len(written), "Count", {"Worker": self.worker}),
            )
        for key in written:
            for batch_id in taken[key].batches:
                self._batches[batch_id].waiting -= 1
        durable = await self._acknowledge()
        if outbox:
            await self._send_alerts(outbox)
        cleared = await self._clear_sent(older_than=0.0 if force else cfg.max_delay_seconds)
        errors = self.stats.write_errors - errors_before
        self._failures = self._failures + 1 if errors else 0  # a race lost is not a failure: no backoff
        return bool(written) or durable or cleared

    def _due(self, key: EntityKey, pending: _EntityPending, now: float) -> bool:
        """Written at this flush? A busy entity each flush, a quiet one once its oldest event has waited
        `max_delay_seconds`; one shared with other writers (it holds records of shards this process does not
        read, or lost a race lately) only then too: each of its writes can cost every other writer a race."""
        waited = now - pending.since >= self.config.max_delay_seconds
        if key in self._contended:
            return waited
        return waited or len(pending.items) >= self.config.flush_min_events

    async def _load(self, keys: list[EntityKey]) -> None:
        if keys:
            for state in (await self.table.load(keys)).values():
                self._cache_put(state)

    def _cache_put(self, state: EntityState) -> None:
        if not set(state.marks) <= self._sources:
            self._contended[state.key] = time.monotonic()  # records of shards others read: a shared entity
        self._cache[state.key] = state
        self._cache.move_to_end(state.key)
        while len(self._cache) > self.config.entity_cache:
            self._cache.popitem(last=False)

    def _put_back(self, key: EntityKey, taken: _EntityPending) -> None:
        pending = self._pending.get(key)
        before = len(pending.items) if pending else 0
        if pending is None:
            self._pending[key] = taken
        else:
            pending.merge(taken)
        self._events_pending += len(self._pending[key].items) - before

    async def _write(self, key: EntityKey, items: list[Pending], *, force: bool) -> dict[str, str] | None:
        """Write an entity's pending events; returns the alerts to send (maybe none), or None if not written."""
        state = self._cache.get(key) or EntityState(key)
        for _ in range(MAX_CONFLICTS):
            now = time.time()
            new, _ = apply(state, items)
            resend = stale_outbox(new, now)
            new = fire(new, summary(new), now, self.config.alert_cooldown_seconds)
            sent = self._sent.get(key, (0.0, {}))[1]
            new = replace(new, outbox={r: t for r, t in new.outbox.items() if sent.get(r) != t})  # sent: clear them
            if new == state and not resend:
                return {}  # every record was applied already (a replay): nothing to write
            try:
                stored = await self.table.write(state, new)
            except Conflict as lost:
                self.stats.conflicts += 1
                self._contended[key] = time.monotonic()
                state = lost.current
                self._cache_put(state)
                if force or not apply(state, items)[1]:
                    continue  # shutting down, or nothing left to apply (our own write whose reply was lost)
                return None  # written again at the next flush, with what arrives meanwhile: one call, not two
            except Exception as exc:
                self.stats.write_errors += 1
                self._cache.pop(key, None)
                log.warning(
                    "entity write failed; retrying at the next flush",
                    extra={"entity": key.entity_id, "error": str(exc)[:300]},
                )
                return None
            self.stats.writes += 1
            self._cache_put(stored)
            self._sent.pop(key, None)  # what this process had sent is out of the outbox now (or was never there)
            fired = {rule: text for rule, text in stored.outbox.items() if state.outbox.get(rule) != text}
            return {**resend, **fired}
        log.info("entity busy with other writers; retrying at the next flush", extra={"entity": key.entity_id})
        return None

    async def _acknowledge(self) -> bool:
        """Record the event ids of batches whose entities are all written, then resolve their futures."""
        ready = {i: b for i, b in self._batches.items() if b.waiting <= 0}
        if not ready:
            return False
        markers = [m for b in ready.values() for m in b.markers]
        if markers:
            try:
                await self.seen.record(markers)
            except Exception as exc:
                log.warning("event ids not recorded; retrying at the next flush", extra={"error": str(exc)[:300]})
                return False
            self.stats.markers += len(markers)
        for i, batch in ready.items():
            del self._batches[i]
            if not batch.future.done():
                batch.future.set_result(None)
        return True

    async def _send_alerts(self, outbox: dict[EntityKey, dict[str, str]]) -> None:
        alerts = [text for sent in outbox.values() for text in sent.values()]
        accepted = await self.alerts.send(alerts)
        self.stats.alerts_sent += len(accepted)
        now = time.monotonic()
        for key, sent in outbox.items():
            done = {rule: text for rule, text in sent.items() if text in accepted}
            if done:
                self._sent[key] = (now, {**self._sent.get(key, (now, {}))[1], **done})

    async def _clear_sent(self, *, older_than: float) -> bool:
        """Sent alerts still in the outbox of an entity that has not been written since: a write to remove them."""
        now = time.monotonic()
        due = [k for k, (since, _) in self._sent.items() if now - since >= older_than]
        for key in due:
            _, sent = self._sent.pop(key)
            try:
                state = await self.table.clear_outbox(key, sent)
            except Exception as exc:
                log.warning(
                    "sent alerts not cleared from the outbox", extra={"entity": key.entity_id, "error": str(exc)}
                )
                self._sent[key] = (now, sent)
                continue
            if state is None:
                self._cache.pop(key, None)  # the outbox changed meanwhile: read the item again before writing it
            else:
                self._cache_put(state)
        return bool(due)
