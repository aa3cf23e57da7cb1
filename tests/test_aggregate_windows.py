"""Rolling windows, snapshots, alert rules and the item codec of the aggregate worker: pure code, checked
against `bench.aggregate.reference`, a single-threaded recomputation written independently of the worker."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from bench.aggregate import figures, reference
from shared.errors import Poison
from workers.aggregate.alerts import fire, rules
from workers.aggregate.events import EntityKey, contributions, validate_event
from workers.aggregate.store import attributes, from_item, update_request
from workers.aggregate.windows import EntityState, Pending, apply, summary

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def want(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The reference figures of each entity (bench/aggregate.py: a single-threaded recomputation)."""
    return {k: figures(v) for k, v in reference(events).items()}


def random_events(
    rng: random.Random, n: int, *, students: int = 4, tutors: int = 2, days: int = 40
) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        at = NOW - timedelta(days=rng.uniform(0, days), seconds=rng.randrange(86400))
        kind = rng.choice(["session_started", "session_completed", "ib_call_logged", "customer_health_update"])
        student = f"s{rng.randrange(students)}"
        payload: dict[str, Any] = {"student_id": student}
        if kind.startswith("session"):
            payload["tutor_id"] = f"t{rng.randrange(tutors)}"
            if kind == "session_completed" and rng.random() < 0.8:
                payload["tutor_rating"] = rng.choice([1, 2.5, 3, 4, 4.5, 5])
        if kind == "customer_health_update":
            payload["health_score"] = round(rng.uniform(20, 100), 1)
        out.append({"event_type": kind, "timestamp": at.isoformat(), "payload": payload, "event_id": f"e{i}"})
    return out


def fold(events: list[dict[str, Any]], rng: random.Random, *, shards: int = 3) -> dict[EntityKey, EntityState]:
    """Apply events to entity states as consumers would: each event on a random shard, each shard's records in
    their order, the shards' batches interleaved at random."""
    per_shard: dict[EntityKey, dict[str, list[Pending]]] = defaultdict(lambda: defaultdict(list))
    positions = [0] * shards
    for e in events:
        event = validate_event(e, now=NOW.timestamp(), max_future_seconds=300)
        shard = rng.randrange(shards)
        positions[shard] += 1
        for c in contributions(event):
            per_shard[c.entity][f"shard-{shard}"].append(Pending(f"shard-{shard}", f"{positions[shard]:064d}", c))
    states = {}
    for key, queues in per_shard.items():
        state = EntityState(key)
        while any(queues.values()):
            source = rng.choice([s for s, q in queues.items() if q])
            size = rng.randint(1, 8)
            batch, queues[source] = queues[source][:size], queues[source][size:]
            state, _ = apply(state, batch)
        states[key] = state
    return states


# --- windows ---------------------------------------------------------------------------------------------


def test_events_spread_over_40_days_give_exact_windows_whatever_the_order() -> None:
    # Given 400 events over 40 days for 4 students and 2 tutors
    rng = random.Random(40)
    events = random_events(rng, 400)

    # When they are applied in a random order, in batches, twice over (different orders)
    for _ in range(2):
        states = fold(events, rng)
        # Then every figure equals the reference, for every entity
        assert {(k.entity_type, k.entity_id): figures(summary(s)) for k, s in states.items()} == want(events)


def test_late_events_land_in_their_day_and_events_over_30_days_old_stop_counting() -> None:
    key = EntityKey("student", "s1")

    def session(days_ago: float, position: int) -> Pending:
        event = validate_event(
            {
                "event_type": "session_started",
                "timestamp": (NOW - timedelta(days=days_ago)).isoformat(),
                "payload": {"student_id": "s1"},
            },
            now=(NOW + timedelta(days=30)).timestamp(),  # the test moves time on
            max_future_seconds=0,
        )
        return Pending("shard-0", f"{position:064d}", contributions(event)[0])

    # Given today's session, then a late one from 10 days ago, and one from 35 days ago
    state, _ = apply(EntityState(key), [session(0, 1)])
    state, _ = apply(state, [session(10, 2), session(35, 3)])
    got = summary(state)
    # Then the late one counts in the 14- and 30-day windows only, the old one in none
    assert (got["sessions_7d"], got["sessions_14d"], got["sessions_30d"]) == (1, 2, 2)
    assert got["events"] == 3 and got["window_end"] == NOW.date().isoformat()

    # When the newest event moves 25 days on, Then the windows roll: the old sessions fall out of them
    state, _ = apply(state, [session(-25, 4)])
    got = summary(state)
    assert (got["sessions_7d"], got["sessions_14d"], got["sessions_30d"]) == (1, 1, 2)
    assert min(state.days) >= (NOW + timedelta(days=25)).date() - timedelta(days=29)


def test_records_at_or_below_their_shards_watermark_are_replays_and_skipped() -> None:
    rng = random.Random(7)
    events = random_events(rng, 60, students=1, tutors=1)
    once = fold(events, rng, shards=1)
    # When the same records are applied again (a replay after a crash or a take-over)
    pending: dict[EntityKey, list[Pending]] = defaultdict(list)
    for position, e in enumerate(events):
        for c in contributions(validate_event(e, now=NOW.timestamp(), max_future_seconds=300)):
            pending[c.entity].append(Pending("shard-0", f"{position:064d}", c))
    for key, state in once.items():
        again, applied = apply(state, pending[key])
        # Then nothing is applied twice
        assert applied == 0 and again == state


def test_the_newest_health_snapshot_wins_whatever_the_arrival_order() -> None:
    key = EntityKey("student", "s1")

    def health(days_ago: int, score: float, position: int) -> Pending:
        event = validate_event(
            {
                "event_type": "customer_health_update",
                "timestamp": (NOW - timedelta(days=days_ago)).isoformat(),
                "payload": {"student_id": "s1", "health_score": score, "sessions_last_7_days": 9},
            },
            now=NOW.timestamp(),
            max_future_seconds=0,
        )
        return Pending("shard-0", f"{position:064d}", contributions(event)[0])

    # Given the newest update (45) arrives before an older one (88)
    state, _ = apply(EntityState(key), [health(0, 45, 1)])
    state, _ = apply(state, [health(3, 88, 2)])
    got = summary(state)
    # Then the newest one holds; the upstream's own count is kept apart from the event-counted windows
    assert got["health_score"] == Decimal(45) and got["reported_sessions_7d"] == 9 and got["sessions_7d"] == 0


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"event_type": "session_started", "timestamp": NOW.isoformat(), "payload": {}}, "student_id or a tutor_id"),
        ({"event_type": "lesson_planned", "timestamp": NOW.isoformat(), "payload": {}}, "event_type"),
        (
            {"event_type": "ib_call_logged", "timestamp": "yesterday at noon", "payload": {"student_id": "s"}},
            "ISO-8601",
        ),
        ({"event_type": "ib_call_logged", "timestamp": NOW.isoformat(), "payload": {"student_id": ""}}, "student_id"),
        (
            {"event_type": "ib_call_logged", "timestamp": NOW.isoformat(), "payload": {"student_id": "a\nb"}},
            "control characters",
        ),
        (
            {
                "event_type": "session_completed",
                "timestamp": NOW.isoformat(),
                "payload": {"tutor_id": "t", "tutor_rating": 9},
            },
            "tutor_rating",
        ),
        (
            {"event_type": "ib_call_logged", "timestamp": "2027-06-01T00:00:00Z", "payload": {"student_id": "s"}},
            "in the future",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_events_are_poison_with_the_field_named(event: Any, reason: str) -> None:
    with pytest.raises(Poison) as caught:
        validate_event(event, now=NOW.timestamp(), max_future_seconds=300)
    assert reason in caught.value.reason


# --- alerts ----------------------------------------------------------------------------------------------


def test_each_rule_holds_as_in_the_seed() -> None:
    student, subject = EntityKey("student", "s1"), EntityKey("subject", "algebra")
    assert set(rules(student, {"ib_calls_14d": 3, "health_score": Decimal(100)})) == {"high_ib_call_frequency"}
    assert rules(student, {"ib_calls_14d": 2, "health_score": Decimal(100)}) == {}
    low = rules(student, {"ib_calls_14d": 0, "health_score": Decimal("49.5")})
    assert low["low_health_score"]["severity"] == "critical"
    assert rules(student, {"health_score": Decimal(69)})["low_health_score"]["severity"] == "warning"
    assert set(rules(subject, {"balance_status": "high_demand", "demand_score": 9, "supply_score": 2})) == {
        "supply_demand_imbalance"
    }
    assert rules(subject, {"balance_status": "balanced"}) == {}
    # tutors never get student alerts
    assert rules(EntityKey("tutor", "t1"), {"ib_calls_14d": 9, "health_score": Decimal(10)}) == {}


def test_an_alert_fires_once_per_cooldown() -> None:
    state = EntityState(EntityKey("student", "s1"))
    held = {"ib_calls_14d": 4, "health_score": Decimal(100)}
    # When the rule holds, Then it fires, with the seed's Detail fields
    first = fire(state, held, now=1000.0, cooldown=60)
    detail = json.loads(first.outbox["high_ib_call_frequency"])
    assert detail["alert_type"] == "high_ib_call_frequency" and detail["entity_id"] == "s1"
    assert detail["details"] == {"ib_calls_14d": 4, "health_score": 100.0} and detail["severity"] == "warning"
    # And it does not fire again within the cooldown, however often the rule is evaluated
    assert fire(first, held, now=1059.0, cooldown=60) == first
    # But does once the cooldown has passed
    again = fire(first, held, now=1060.0, cooldown=60)
    assert again.alerted["high_ib_call_frequency"] == 1060.0
    assert json.loads(again.outbox["high_ib_call_frequency"])["alert_id"] != detail["alert_id"]


# --- the item ----------------------------------------------------------------------------------------------


def test_an_entity_item_round_trips_and_is_updated_with_add_on_its_day_counters() -> None:
    from boto3.dynamodb.types import TypeSerializer

    rng = random.Random(3)
    states = fold(random_events(rng, 80, students=1, tutors=1), rng, shards=2)
    for key, state in states.items():
        # Given a state stored as an item (as DynamoDB returns it)
        stored = {k: TypeSerializer().serialize(v) for k, v in attributes(state).items()}
        stored.update(entity_id={"S": key.entity_id}, entity_type={"S": key.entity_type}, ver={"N": "3"})
        # Then it reads back as the same state
        back = from_item(key, stored)
        assert back == EntityState(**{**vars(state), "ver": 3})
        # And a change is an ADD on its day counters, conditioned on the version it was computed from
        request = update_request(back, fire(back, {"ib_calls_14d": 5}, now=1.0, cooldown=0), "now")
        assert request["ConditionExpression"].endswith(":v" + str(len(request["ExpressionAttributeValues"]) - 1))
        assert "ADD" in request["UpdateExpression"]
