"""Everything a message carries is untrusted: its job id, its body's fields, its size and shape. Each test
is an attack that once worked against a running fleet."""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any

import pytest

from shared.dlq import peek
from shared.logs import configure_logging
from shared.stage import Services
from tests.helpers import ScriptedStage, drain_queue, fast_tuning, queue_urls, run_burst
from workers.compact.stage import CompactStage
from workers.echo import ECHO
from workers.echo.stage import EchoStage
from workers.ingest.config import IngestConfig
from workers.ingest.resources import COMPACT, INGEST
from workers.ingest.stage import IngestStage

SECRETS = "password=hunter2 AKIAIOSFODNN7EXAMPLE"


def with_job(job_id: str) -> dict[str, Any]:
    return {"fleet.job-id": {"DataType": "String", "StringValue": job_id}}


async def send_raw(services: Services, url: str, body: Any, attributes: dict[str, Any] | None = None) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    await services.aws.sqs.send_message(QueueUrl=url, MessageBody=text, MessageAttributes=attributes or {})


async def test_a_message_cannot_write_to_a_job_it_does_not_belong_to(fleet: Services) -> None:
    # Given someone's compact job, and a raw echo message claiming its id
    victim = str(uuid.uuid4())
    await fleet.jobs.create(victim, "manifest", queue=fleet.settings.name_of(COMPACT))
    url, _ = await queue_urls(fleet)
    await send_raw(fleet, url, {"text": "hi"}, with_job(victim))

    # When the echo worker handles it
    worker = await run_burst(EchoStage(fleet), fleet, fast_tuning())

    # Then the message is handled on its own merits, and the job it claimed is untouched
    assert worker.stats.succeeded == 1
    job = await fleet.jobs.get(victim)
    assert job is not None and [h["stage"] for h in job["history"]] == ["submit"]


@pytest.mark.parametrize("job_id", ["../../x", "a" * 3000, "job\nid"])
async def test_a_malformed_job_id_is_poison_at_once_and_creates_nothing(fleet: Services, job_id: str) -> None:
    # Given a message whose fleet.job-id is a path, 3,000 characters, or carries a newline
    url, dlq = await queue_urls(fleet)
    await send_raw(fleet, url, {"text": "hi"}, with_job(job_id))

    # When the echo worker runs
    stage = EchoStage(fleet)
    await run_burst(stage, fleet, fast_tuning())

    # Then it is dead-lettered on its first attempt, saying why, and no job was created under that id
    (dead,) = await drain_queue(fleet, dlq)
    assert dead["MessageAttributes"]["fleet.error-code"]["StringValue"] == "BAD_JOB_ID"
    assert dead["MessageAttributes"]["fleet.attempts"]["StringValue"] == "1"
    assert len(job_id) > 128 or await fleet.jobs.get(job_id) is None


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_secret_shaped_text_in_a_body_reaches_neither_logs_nor_job_history(fleet: Services, fmt: str) -> None:
    # Given logs captured in either format, and an echo job whose text carries a password and a key id
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream)
    url, _ = await queue_urls(fleet)
    job_id = str(uuid.uuid4())
    await fleet.jobs.create(job_id, "echo", queue=fleet.settings.name_of(ECHO), terminal="echo")
    await send_raw(fleet, url, {"text": SECRETS}, with_job(job_id))

    # When the echo worker handles it
    await run_burst(EchoStage(fleet), fleet, fast_tuning())

    # Then neither the logs nor the job's record hold the secrets
    job = await fleet.jobs.get(job_id)
    assert job is not None and job["status"] == "SUCCEEDED"
    for text in (stream.getvalue(), json.dumps(job, default=str)):
        assert "hunter2" not in text and "AKIAIOSFODNN7EXAMPLE" not in text


def test_secret_shapes_are_masked_wherever_they_appear_in_either_format() -> None:
    for fmt in ("json", "text"):
        stream = io.StringIO()
        configure_logging("INFO", fmt, stream)
        logging.getLogger("fleet.test").info(
            f"said {SECRETS}",
            extra={"note": "Authorization: Bearer abcdef0123456789 and ghp_" + "a" * 36, "nested": {"x": SECRETS}},
        )
        out = stream.getvalue()
        assert "hunter2" not in out and "AKIAIOSFODNN7EXAMPLE" not in out and "abcdef0123456789" not in out
        assert "ghp_aaaa" not in out and "password=***" in out


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_field_cannot_forge_a_log_line_or_repaint_the_terminal(fmt: str) -> None:
    # Given a message field and a job id attribute built to look like a second, alarming log line
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream)
    forged = "x\nERROR   fleet.runtime: message dead-lettered error=FORGED \x1b[31mred\x1b[0m \u202eevil"

    # When code logs them
    logging.getLogger("fleet.test").info("handled", extra={"field": forged, "job_id": forged})

    # Then there is one line, no raw escape or bidi character reaches the output
    out = stream.getvalue()
    assert out.count("\n") == 1
    assert "\x1b" not in out and "\u202e" not in out
    if fmt == "json":
        assert json.loads(out)["field"].startswith("x\nERROR")  # still readable once parsed


async def test_a_body_nested_ten_thousand_deep_is_poison_at_once(fleet: Services) -> None:
    # Given a compact message nested 10,000 deep
    url, dlq = await queue_urls(fleet, COMPACT)
    await send_raw(fleet, url, "[" * 10_000 + "]" * 10_000)

    # When the compact worker runs
    stage = ScriptedStage()
    await run_burst(CompactStage(fleet), fleet, fast_tuning(), queue=COMPACT)

    # Then it is dead-lettered on its first attempt, as too deep
    (dead,) = await drain_queue(fleet, dlq)
    assert dead["MessageAttributes"]["fleet.error-code"]["StringValue"] == "TOO_DEEP"
    assert dead["MessageAttributes"]["fleet.attempts"]["StringValue"] == "1"
    assert stage.calls == []


async def test_a_size_no_s3_object_can_have_is_poison_at_once(fleet: Services) -> None:
    # Given an S3 notification whose object claims 10**200 bytes
    url, dlq = await queue_urls(fleet, INGEST)
    note = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventTime": "2026-11-27T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": fleet.settings.name_of(INGEST).replace("ingest", "landing")},
                    "object": {"key": "incoming/2026-11-27/x.ndjson", "size": 10**200, "eTag": "0" * 32},
                },
            }
        ]
    }
    await send_raw(fleet, url, note)

    # When the ingest worker runs
    await run_burst(IngestStage(fleet, IngestConfig(max_wait_seconds=3600)), fleet, fast_tuning(), queue=INGEST)

    # Then it is dead-lettered on its first attempt, with a reason that names the rule (never the key)
    (letter,) = await peek(fleet.aws.sqs, dlq)
    assert letter.attempts == "1" and "size is larger than an S3 object can be" in letter.error
    assert "x.ndjson" not in letter.error
