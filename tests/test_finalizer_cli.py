"""`fleet submit finalize` and the finalizer's `fleet demo` step, against the emulator."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from shared.app import load_stage
from shared.cli import build_parser
from shared.registry import discover
from shared.stage import JOB_ID_ATTRIBUTE, Services
from tests.finalizer_helpers import SEED_SUCCESS, queue_url, seed_event
from workers.finalizer.demo import demo
from workers.finalizer.resources import FINALIZE
from workers.finalizer.stage import FinalizerStage


async def test_submit_finalize_reads_a_file_and_queues_the_event_under_its_execution_id(
    fleet: Services, tmp_path: Path
) -> None:
    # Given an event file
    event = seed_event(SEED_SUCCESS)
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))

    # When `fleet submit finalize FILE` runs
    args = build_parser().parse_args(["submit", "finalize", str(path)])
    job_id = await args.submit(args, fleet)

    # Then the job id is the execution id, the job is recorded, and the event is on fleet-finalize
    assert job_id == event["execution_id"]
    job = await fleet.jobs.get(job_id)
    assert job is not None and job["kind"] == "finalize"
    assert job["detail"] == {"video_key": "videos/meeting.mp4", "bucket": "input-bucket"}
    url = await queue_url(fleet, fleet.settings.name_of(FINALIZE))
    resp = await fleet.aws.sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1)
    (message,) = resp["Messages"]
    assert json.loads(message["Body"]) == event
    assert message["MessageAttributes"][JOB_ID_ATTRIBUTE]["StringValue"] == job_id


async def test_submit_finalize_reads_stdin_and_refuses_a_malformed_event(
    fleet: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an event on stdin
    event = seed_event(SEED_SUCCESS)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(event)))
    args = build_parser().parse_args(["submit", "finalize", "-"])

    # When it is submitted, Then its id is printed back
    assert await args.submit(args, fleet) == event["execution_id"]

    # Given a malformed one, When it is submitted, Then the CLI refuses it with the reason
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({**event, "status": "DONE"})))
    with pytest.raises(SystemExit, match="not a valid final event: invalid message: status"):
        await args.submit(args, fleet)


async def test_the_worker_is_registered(fleet: Services) -> None:
    spec = discover().get("finalizer")
    assert spec.queue == FINALIZE
    stage = load_stage(spec, fleet)
    assert isinstance(stage, FinalizerStage) and stage.name == "finalizer"


async def test_demo_finalizes_three_jobs_and_shows_their_notifications(fleet: Services) -> None:
    # Given the bootstrapped fleet
    out = io.StringIO()

    # When the finalizer's demo step runs
    await demo(fleet.settings, Console(file=out, width=200, color_system=None))

    # Then its table shows each job's final status, cost and a delivered notification
    text = out.getvalue()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 6}
    assert "COMPLETED" in rows["seed success"] and "3.19" in rows["seed success"]
    assert "PARTIAL_SUCCESS" in rows["seed partial"]
    assert "FAILED" in rows["seed failure"]
    assert all("yes" in rows[f"seed {label}"] for label in ("success", "partial", "failure"))
    assert "succeeded 3" in text
