"""The aggregate worker's commands as a user types them: `fleet submit events`, `fleet worker aggregate
--burst`, `fleet entity`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.aggregate import reference
from shared.stage import Services
from tests.test_aggregate import FAST
from tests.test_process import run_fleet
from workers.aggregate.resources import EVENTS_STREAM


async def records_on_stream(services: Services) -> int:
    kinesis, stream = services.aws.kinesis, services.settings.name_of(EVENTS_STREAM)
    total = 0
    for shard in (await kinesis.list_shards(StreamName=stream))["Shards"]:
        it = (
            await kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        total += len((await kinesis.get_records(ShardIterator=it))["Records"])
    return total


async def test_a_file_with_invalid_lines_is_refused_whole_with_each_line_named(fleet: Services, tmp_path: Path) -> None:
    # Given a file whose second and fourth lines are invalid
    now = datetime.now(UTC).isoformat()
    good = json.dumps({"event_type": "ib_call_logged", "timestamp": now, "payload": {"student_id": "st-1"}})
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join([good, "{oops", good, json.dumps({"event_type": "ib_call_logged"}), ""]))

    # When it is submitted, Then nothing is sent and both lines are named with why
    refused = await run_fleet(fleet.settings, "submit", "events", str(path))
    assert refused.returncode != 0
    assert f"{path}:2: event is not JSON" in refused.stderr
    assert f"{path}:4: invalid event: timestamp: Field required" in refused.stderr
    assert await records_on_stream(fleet) == 0

    # And with --skip-invalid the valid lines go
    sent = await run_fleet(fleet.settings, "submit", "events", str(path), "--skip-invalid")
    assert sent.returncode == 0, sent.stderr
    assert "2 events put on" in sent.stdout and "2 invalid lines skipped" in sent.stdout
    assert await records_on_stream(fleet) == 2


async def test_submit_then_a_burst_worker_then_the_entity_view(fleet: Services, tmp_path: Path) -> None:
    # Given a student's sessions and IB calls over three weeks, submitted from a file
    end = datetime.now(UTC) - timedelta(hours=1)
    events = [
        {
            "event_type": "session_completed",
            "timestamp": (end - timedelta(days=d)).isoformat(),
            "payload": {"student_id": "st-cli", "tutor_id": "tu-cli", "tutor_rating": 4 + d % 2},
            "event_id": f"cli-{d}",
        }
        for d in range(0, 21, 2)
    ] + [
        {
            "event_type": "ib_call_logged",
            "timestamp": (end - timedelta(days=d)).isoformat(),
            "payload": {"student_id": "st-cli"},
        }
        for d in (1, 9)
    ]
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    submitted = await run_fleet(fleet.settings, "submit", "events", str(path))
    assert submitted.returncode == 0, submitted.stderr
    assert f"13 events put on {fleet.settings.name_of(EVENTS_STREAM)}" in submitted.stdout

    # When the worker runs until the stream is read
    worked = await run_fleet(
        fleet.settings, "worker", "aggregate", "--burst", FLEET_DEFAULTS__WAIT_TIME_SECONDS="1", **FAST
    )
    assert worked.returncode == 0, worked.stderr[-2000:]

    # Then `fleet entity` shows the windows the reference computes, and the daily buckets
    shown = await run_fleet(fleet.settings, "entity", "st-cli")
    assert shown.returncode == 0, shown.stderr
    ref = reference(events)[("student", "st-cli")]
    for name in ("sessions_7d", "sessions_14d", "sessions_30d", "ib_calls_7d", "ib_calls_14d"):
        assert _row_in(shown.stdout, name, str(ref[name])), (name, shown.stdout)
    assert "student st-cli" in shown.stdout
    day = (end - timedelta(days=1)).date().isoformat()  # that day: one IB call, no session
    assert any(_cells(line)[:3] == [day, "0", "1"] for line in shown.stdout.splitlines()), shown.stdout
    tutor = await run_fleet(fleet.settings, "entity", "tu-cli", "--type", "tutor")
    assert _row_in(tutor.stdout, "avg_rating", str(reference(events)[("tutor", "tu-cli")]["avg_rating"]))
    missing = await run_fleet(fleet.settings, "entity", "nobody")
    assert missing.returncode == 1 and "no metrics for nobody" in missing.stdout


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


def _row_in(text: str, name: str, value: str) -> bool:
    return any(_cells(line)[:2] == [name, value] for line in text.splitlines())
