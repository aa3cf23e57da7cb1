"""The seed's three anomaly rules, once per cooldown, and the EventBridge sender.

Rules (seed 004), evaluated on an entity's figures after each write:
- `high_ib_call_frequency`: a student with `ib_calls_14d` >= 3 (warning);
- `low_health_score`: a student whose `health_score` < 70 (critical below 50, else warning);
- `supply_demand_imbalance`: a subject whose newest `balance_status` is `high_demand` (info).

An alert fires when its rule holds and it has not fired for that entity within the cooldown. The decision
travels in the entity's conditional write (`alerted_<rule>`), so two writers cannot both fire it, and the
alert waits in the item (`alert_<rule>`, an outbox) until EventBridge has accepted it: a crash between the
write and the send is resent by the next write of that entity. So alerts are at least once, never lost, and
not repeated on every event. Each carries an `alert_id` for receivers that want exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shared.metrics import Metric, Metrics
from workers.aggregate.events import EntityKey
from workers.aggregate.windows import EntityState

if TYPE_CHECKING:
    from types_aiobotocore_events import EventBridgeClient
    from types_aiobotocore_events.type_defs import PutEventsRequestEntryTypeDef

log = logging.getLogger("fleet.aggregate")

RULES = ("high_ib_call_frequency", "low_health_score", "supply_demand_imbalance")
SOURCE = "fleet.aggregate"
IB_CALLS_THRESHOLD = 3
LOW_HEALTH = 70
CRITICAL_HEALTH = 50
PUT_EVENTS_BATCH = 10  # EventBridge's limit per call
SEND_ATTEMPTS = 3
RESEND_AFTER_SECONDS = 60.0  # an outbox entry this old was left by a crash: the next writer resends it


def _number(value: Any) -> float | int:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value if isinstance(value, int | float) else 0


def rules(key: EntityKey, figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rule name -> (alert_type, severity, details, message) for each rule that holds."""
    held: dict[str, dict[str, Any]] = {}
    entity = key.entity_id
    if key.entity_type == "student":
        ib_calls = int(figures.get("ib_calls_14d", 0))
        health = _number(figures.get("health_score", 100))
        if ib_calls >= IB_CALLS_THRESHOLD:
            held["high_ib_call_frequency"] = {
                "severity": "warning",
                "details": {"ib_calls_14d": ib_calls, "health_score": float(health)},
                "message": f"Student {entity} has {ib_calls} IB calls in 14 days",
            }
        if health < LOW_HEALTH:
            held["low_health_score"] = {
                "severity": "critical" if health < CRITICAL_HEALTH else "warning",
                "details": {
                    "health_score": float(health),
                    "sessions_7d": int(figures.get("sessions_7d", 0)),
                    "ib_calls_14d": ib_calls,
                },
                "message": f"Student {entity} has low health score: {float(health)}",
            }
    if key.entity_type == "subject" and figures.get("balance_status") == "high_demand":
        demand, supply = _number(figures.get("demand_score", 0)), _number(figures.get("supply_score", 0))
        held["supply_demand_imbalance"] = {
            "severity": "info",
            "details": {"balance_status": "high_demand", "demand_score": float(demand), "supply_score": float(supply)},
            "message": f"High demand detected for {entity} (Demand: {demand}, Supply: {supply})",
        }
    return held


def fire(state: EntityState, figures: dict[str, Any], now: float, cooldown: float) -> EntityState:
    """The state with every rule that holds and is out of its cooldown fired (recorded and put in the outbox)."""
    alerted, outbox = dict(state.alerted), dict(state.outbox)
    for rule, alert in rules(state.key, figures).items():
        last = alerted.get(rule)
        if last is not None and now - last < cooldown:
            continue
        alerted[rule] = now
        outbox[rule] = json.dumps(
            {
                "alert_id": str(uuid.uuid4()),
                "alert_type": rule,
                "severity": alert["severity"],
                "entity_id": state.key.entity_id,
                "entity_type": state.key.entity_type,
                "details": alert["details"],
                "message": alert["message"],
                "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
            },
            sort_keys=True,
        )
    if alerted == state.alerted:
        return state
    return replace(state, alerted=alerted, outbox=outbox)


def stale_outbox(state: EntityState, now: float) -> dict[str, str]:
    """Alerts another writer put in the outbox and never confirmed (it crashed): to be resent."""
    out = {}
    for rule, text in state.outbox.items():
        try:
            sent_at = datetime.fromisoformat(json.loads(text)["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            sent_at = 0.0
        if now - sent_at >= RESEND_AFTER_SECONDS:
            out[rule] = text
    return out


class AlertSender:
    """PutEvents, at most 10 entries a call, retrying the entries EventBridge refused one by one."""

    def __init__(self, events: EventBridgeClient, bus: str, metrics: Metrics, worker: str) -> None:
        self._events = events
        self.bus = bus
        self._metrics = metrics
        self._worker = worker
        self.sent = 0
        self.failed = 0

    async def send(self, alerts: list[str]) -> set[str]:
        """Send alerts (their JSON); returns those EventBridge accepted."""
        accepted: set[str] = set()
        for start in range(0, len(alerts), PUT_EVENTS_BATCH):
            accepted |= await self._send_batch(alerts[start : start + PUT_EVENTS_BATCH])
        refused = len(alerts) - len(accepted)
        self.sent += len(accepted)
        self.failed += refused
        dims = {"Worker": self._worker}
        await self._metrics.emit(Metric("AlertsSent", len(accepted), "Count", dims))
        if refused:
            await self._metrics.emit(Metric("AlertsFailed", refused, "Count", dims))
            log.error("alerts refused by EventBridge; they stay in their entity's outbox", extra={"alerts": refused})
        return accepted

    async def _send_batch(self, batch: list[str]) -> set[str]:
        accepted: set[str] = set()
        todo = batch
        for attempt in range(SEND_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            entries: list[PutEventsRequestEntryTypeDef] = [
                {"Source": SOURCE, "DetailType": json.loads(a)["alert_type"], "Detail": a, "EventBusName": self.bus}
                for a in todo
            ]
            try:
                resp = await self._events.put_events(Entries=entries)
            except Exception as exc:
                log.warning("PutEvents failed; retrying", extra={"error": str(exc)[:300], "attempt": attempt + 1})
                continue
            results = resp.get("Entries", [])
            retry = []
            for alert, result in zip(todo, results, strict=False):
                if result.get("ErrorCode"):
                    retry.append(alert)
                    log.warning(
                        "alert refused by EventBridge",
                        extra={"code": result.get("ErrorCode"), "error": result.get("ErrorMessage", "")[:200]},
                    )
                else:
                    accepted.add(alert)
            retry += todo[len(results) :]  # entries without a result: not accepted
            if not retry:
                return accepted
            todo = retry
        return accepted
