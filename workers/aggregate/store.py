"""Entity items in `fleet-metrics`, written by compare-and-set; event-id markers in `fleet-events-seen`.

An entity item holds the contract's attributes (`sessions_7d` ... `last_updated`, readable by anyone) and the
state they are computed from, in flat attributes (a missing map cannot take `ADD map.day`):
- `s_YYYYMMDD`, `i_YYYYMMDD`, `r_YYYYMMDD`, `n_YYYYMMDD`: the day's sessions, IB calls, rating sum and count,
  changed with atomic `ADD`;
- `wm_<shard>`: the position of the last record of that shard applied (replays are skipped);
- `newest_at`, `events`, the newest health / supply snapshot (`health_as_of`, `supply_as_of`, `*_digest`),
  `alerted_<rule>` and the alert outbox `alert_<rule>`;
- `ver`, bumped by every write. Each write is one UpdateItem on condition `ver` is still the version the
  writer computed from, so the windows always match the buckets; a writer that lost the race gets the current
  item back (`ReturnValuesOnConditionCheckFailure`) and recomputes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.errors import is_conditional_failure
from workers.aggregate.events import EntityKey, Snapshot, parse_time
from workers.aggregate.windows import Day, EntityState, summary

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_ser = TypeSerializer()
_de = TypeDeserializer()

BATCH_GET = 100
BATCH_WRITE = 25
DAY_KINDS = ("s", "i", "r", "n")  # sessions, IB calls, rating sum, rating count
_DAY = re.compile(r"^([sirn])_(\d{8})$")
MARK = "wm_"
ALERTED = "alerted_"
OUTBOX = "alert_"
HEALTH_FIELDS = ("health_score", "reported_sessions_7d", "reported_sessions_30d", "reported_ib_calls_14d")
SUPPLY_FIELDS = ("region", "available_tutors", "active_students", "demand_score", "supply_score", "balance_status")
KEY_ATTRS = ("entity_id", "entity_type", "ver", "last_updated")


class Conflict(Exception):
    """The item changed since the writer read it; `current` is what it holds now."""

    def __init__(self, current: EntityState) -> None:
        super().__init__("entity item changed since it was read")
        self.current = current


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def item_key(key: EntityKey) -> dict[str, Any]:
    return {"entity_id": {"S": key.entity_id}, "entity_type": {"S": key.entity_type}}


def _day_attrs(d: date, day: Day) -> dict[str, Any]:
    stamp = d.strftime("%Y%m%d")
    out: dict[str, Any] = {}
    values: tuple[int | Decimal, ...] = (day.sessions, day.ib_calls, day.rating_sum, day.rating_count)
    for kind, value in zip(DAY_KINDS, values, strict=True):
        if value:
            out[f"{kind}_{stamp}"] = Decimal(value)
    return out


def attributes(state: EntityState) -> dict[str, Any]:
    """Every stored attribute of the state except its key, version and `last_updated` (Python values)."""
    out: dict[str, Any] = {k: v for k, v in summary(state).items() if v is not None}
    for d, day in state.days.items():
        out.update(_day_attrs(d, day))
    for source, position in state.marks.items():
        out[MARK + source] = position
    if state.newest is not None:
        out["newest_at"] = state.newest.isoformat()
    if state.health is not None:
        out["health_digest"] = state.health.digest
    if state.supply is not None:
        out["supply_digest"] = state.supply.digest
    for rule, at in state.alerted.items():
        out[ALERTED + rule] = Decimal(f"{at:.3f}")
    for rule, text in state.outbox.items():
        out[OUTBOX + rule] = text
    return {k: (Decimal(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in out.items()}


def _snapshot(values: dict[str, Any], fields: tuple[str, ...], prefix: str) -> Snapshot | None:
    at = values.get(f"{prefix}_as_of")
    if not isinstance(at, str):
        return None
    kept = tuple(sorted((f, values[f]) for f in fields if f in values))
    return Snapshot(parse_time(at), str(values.get(f"{prefix}_digest", "")), kept)


def from_item(key: EntityKey, item: dict[str, Any] | None) -> EntityState:
    if not item:
        return EntityState(key)
    values = {k: _de.deserialize(v) for k, v in item.items()}
    days: dict[date, dict[str, Any]] = {}
    for name, value in values.items():
        m = _DAY.match(name)
        if m:
            days.setdefault(datetime.strptime(m.group(2), "%Y%m%d").date(), {})[m.group(1)] = value
    newest = values.get("newest_at")
    return EntityState(
        key=key,
        ver=int(values.get("ver", 0)),
        days={
            d: Day(int(v.get("s", 0)), int(v.get("i", 0)), Decimal(v.get("r", 0)), int(v.get("n", 0)))
            for d, v in days.items()
        },
        marks={k[len(MARK) :]: str(v) for k, v in values.items() if k.startswith(MARK)},
        newest=parse_time(newest) if isinstance(newest, str) else None,
        events=int(values.get("events", 0)),
        health=_snapshot(values, HEALTH_FIELDS, "health"),
        supply=_snapshot(values, SUPPLY_FIELDS, "supply"),
        alerted={k[len(ALERTED) :]: float(v) for k, v in values.items() if k.startswith(ALERTED)},
        outbox={k[len(OUTBOX) :]: str(v) for k, v in values.items() if k.startswith(OUTBOX)},
    )


class _Expression:
    """Placeholders for every name and value: attribute names come from data (shard ids) and dates."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attr: str) -> str:
        alias = f"#n{len(self.names)}"
        self.names[alias] = attr
        return alias

    def value(self, value: Any) -> str:
        alias = f":v{len(self.values)}"
        self.values[alias] = _ser.serialize(value)
        return alias


def update_request(old: EntityState, new: EntityState, updated_at: str) -> dict[str, Any]:
    """UpdateItem arguments turning `old` (as stored) into `new`: ADD for day counters, SET/REMOVE for the rest,
    on condition that the item is still at `old.ver`."""
    before = attributes(old) if old.ver else {}
    after = attributes(new)
    x = _Expression()
    adds, sets, removes = [], [], []
    for attr, value in after.items():
        if _DAY.match(attr):
            delta = value - before.get(attr, 0)
            if delta:
                adds.append(f"{x.name(attr)} {x.value(delta)}")
        elif before.get(attr) != value:
            sets.append(f"{x.name(attr)} = {x.value(value)}")
    removes = [x.name(attr) for attr in before if attr not in after]
    sets.append(f"{x.name('last_updated')} = {x.value(updated_at)}")
    adds.append(f"{x.name('ver')} {x.value(1)}")
    parts = [f"SET {', '.join(sets)}", f"ADD {', '.join(adds)}"]
    if removes:
        parts.append(f"REMOVE {', '.join(removes)}")
    # A new item must not exist yet; an existing one must still be the version the writer computed from.
    condition = f"{x.name('ver')} = {x.value(old.ver)}" if old.ver else f"attribute_not_exists({x.name('entity_id')})"
    return {
        "UpdateExpression": " ".join(parts),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": x.names,
        "ExpressionAttributeValues": x.values,
    }


class MetricsTable:
    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    async def load(self, keys: Iterable[EntityKey]) -> dict[EntityKey, EntityState]:
        """Current states (consistent reads); an entity without an item gets an empty state."""
        wanted = list(dict.fromkeys(keys))
        out = {k: EntityState(k) for k in wanted}
        for start in range(0, len(wanted), BATCH_GET):
            request: Any = {
                self.table: {"Keys": [item_key(k) for k in wanted[start : start + BATCH_GET]], "ConsistentRead": True}
            }
            delay = 0.05
            while request:
                resp = await self._ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    key = EntityKey(item["entity_type"]["S"], item["entity_id"]["S"])
                    out[key] = from_item(key, item)
                request = resp.get("UnprocessedKeys") or None
                if request:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2)
        return out

    async def write(self, old: EntityState, new: EntityState) -> EntityState:
        """Store `new` if the item is still `old`; returns the state as stored, or raises `Conflict`.

        The item is not read back: the condition proves it held `old`, so it now holds `new` at the next
        version (and nothing is serialized twice, which on moto costs more than the write)."""
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=item_key(new.key),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **update_request(old, new, now_iso()),
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise Conflict(from_item(new.key, exc.response.get("Item"))) from None  # type: ignore[arg-type]
            raise
        return replace(new, ver=old.ver + 1)

    async def clear_outbox(self, key: EntityKey, sent: dict[str, str]) -> EntityState | None:
        """Remove alerts EventBridge accepted from the outbox (unless they changed meanwhile)."""
        x = _Expression()
        removes = [x.name(OUTBOX + rule) for rule in sent]
        condition = " AND ".join(f"#n{i} = {x.value(text)}" for i, text in enumerate(sent.values()))
        try:
            resp = await self._ddb.update_item(
                TableName=self.table,
                Key=item_key(key),
                UpdateExpression=f"REMOVE {', '.join(removes)} ADD {x.name('ver')} {x.value(1)}",
                ConditionExpression=condition,
                ExpressionAttributeNames=x.names,
                ExpressionAttributeValues=x.values,
                ReturnValues="ALL_NEW",  # the condition was on the outbox only: the rest may have moved
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return None
            raise
        return from_item(key, resp.get("Attributes"))

    async def scan(self) -> list[dict[str, Any]]:
        """Every entity item, as plain values (small tables: the demo, checks)."""
        out = []
        async for page in self._ddb.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True):
            out += [{k: _de.deserialize(v) for k, v in item.items()} for item in page.get("Items", [])]
        return out

    async def items_of(self, entity_id: str) -> list[dict[str, Any]]:
        """Every item of an entity id (all its types), as plain values: for `fleet entity`."""
        resp = await self._ddb.query(
            TableName=self.table,
            KeyConditionExpression="entity_id = :id",
            ExpressionAttributeValues={":id": {"S": entity_id}},
            ConsistentRead=True,
        )
        return [{k: _de.deserialize(v) for k, v in item.items()} for item in resp.get("Items", [])]


@dataclass(frozen=True)
class Marker:
    event_id: str
    record: str  # the ident of the record that carried the event first (`shard:sequence`)


class SeenEvents:
    """One marker per event id, written once the event's effects are durable. A marker naming another record
    means the event was counted already; one naming this record means this is a replay of that record."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, *, retention_days: int) -> None:
        self._ddb = dynamodb
        self.table = table
        self.retention = retention_days * 86400

    @staticmethod
    def key(event_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"event#{event_id}"}}

    async def check(self, event_ids: Iterable[str]) -> dict[str, str]:
        """event id -> the record that carried it first, for the ids already seen."""
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), BATCH_GET):
            request: Any = {
                self.table: {
                    "Keys": [self.key(i) for i in ids[start : start + BATCH_GET]],
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, #r",
                    "ExpressionAttributeNames": {"#r": "record"},
                }
            }
            while request:
                resp = await self._ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    found[item["pk"]["S"].removeprefix("event#")] = item.get("record", {}).get("S", "")
                request = resp.get("UnprocessedKeys") or None
        return found

    async def record(self, markers: list[Marker]) -> None:
        expires = str(int(time.time()) + self.retention)
        puts = {
            m.event_id: {
                "PutRequest": {"Item": {**self.key(m.event_id), "record": {"S": m.record}, "ttl": {"N": expires}}}
            }
            for m in markers
        }
        todo: list[Any] = list(puts.values())
        delay = 0.05
        while todo:
            chunk, todo = todo[:BATCH_WRITE], todo[BATCH_WRITE:]
            resp = await self._ddb.batch_write_item(RequestItems={self.table: chunk})
            left = resp.get("UnprocessedItems", {}).get(self.table, [])
            if left:
                todo = list(left) + todo
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2)
