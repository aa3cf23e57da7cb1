"""The finalizer's rules without AWS: validation, final status, cost, subject and message shapes."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from shared.errors import Poison
from tests.finalizer_helpers import SEED_FAILURE, SEED_SUCCESS, seed_event
from workers.finalizer.cost import bedrock_cost, calculate_cost, transcribe_cost
from workers.finalizer.final_event import final_event
from workers.finalizer.models import FinalEvent
from workers.finalizer.notification import SUBJECT_LIMIT, build_notification, make_subject
from workers.finalizer.status import determine_final_status
from workers.finalizer.summary import Summary

ID = "550e8400-e29b-41d4-a716-446655440000"


def parse(body: Any) -> FinalEvent:
    """The stage's own parse path (shared.stage.parse_body), without building a stage."""
    from shared.stage import parse_body

    return parse_body(FinalEvent, body if isinstance(body, str) else json.dumps(body))


def event_with(results: dict[str, str], status: str = "COMPLETED", **extra: Any) -> FinalEvent:
    body = {
        "execution_id": ID,
        "status": status,
        "processing_results": {name: {"status": s} for name, s in results.items()},
        **extra,
    }
    return parse(body)


# --- accepted formats ------------------------------------------------------------------------------------


def test_the_seeds_success_and_failure_events_are_accepted_unchanged() -> None:
    # Given the two event formats exactly as the seed documents them
    # When they are parsed
    success = parse(SEED_SUCCESS)
    failure = parse(SEED_FAILURE)

    # Then every field the finalizer uses is read
    assert success.processing_results["llm_processing"].tokens_used == 45000
    assert success.timestamps.started_at == datetime(2024, 12, 11, 10, 0, tzinfo=UTC)
    assert failure.error is not None and failure.error.error_code == "BedrockQuotaExceeded"


def test_events_built_by_shared_final_event_and_sns_envelopes_are_accepted() -> None:
    # Given an event from the helper other pipelines use, delivered through SNS (not raw)
    event = final_event(ID, "COMPLETED", {"clips": {"status": "COMPLETED", "clips_uri": "s3://fleet-media/e1/"}})
    envelope = {"Type": "Notification", "Message": json.dumps(event)}

    # When it is parsed
    parsed = parse(envelope)

    # Then the inner event is read, with the pipeline's own fields
    assert parsed.processing_results["clips"].uris() == ["s3://fleet-media/e1/"]


# --- malformed events are poison --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"execution_id": "550e8400-..."}, "execution_id"),  # the seed's own elided placeholder
        ({"execution_id": "550e8400e29b41d4a716446655440000"}, "execution_id"),
        ({"execution_id": "{550e8400-e29b-41d4-a716-446655440000}"}, "execution_id"),
        ({"status": "DONE"}, "status"),
        ({"status": "completed"}, "status"),
        ({"processing_results": {"transcription": {"status": "SUCCEEDED"}}}, "processing_results"),
        ({"bucket": "Input_Bucket"}, "bucket"),
        ({"video_key": "videos/a\nb.mp4"}, "video_key"),
        ({"processing_results": {"t": {"status": "COMPLETED", "output_uri": "https://evil/x"}}}, "output_uri"),
        ({"processing_results": {"t": {"status": "COMPLETED", "output_uri": "s3://out/../etc"}}}, "output_uri"),
        ({"processing_results": {"t": {"status": "COMPLETED", "output_uri": "s3://out/<b>.zip"}}}, "output_uri"),
        ({"processing_results": {"t": {"status": "COMPLETED", "clips_uri": "s3://x/a b"}}}, "clips_uri"),
        ({"processing_results": {"t": {"status": "COMPLETED", "extra": {"deep": 1}}}}, "extra"),
        ({"processing_results": {"t": {"status": "COMPLETED", "tokens_used": -1}}}, "tokens_used"),
        ({"error": {"error_code": "X", "error_message": "m" * 5000}}, "error_message"),
        ({"timestamps": {"started_at": "2024-12-11T12:00:00Z", "completed_at": "2024-12-11T10:00:00Z"}}, "before"),
    ],
)
def test_malformed_events_are_poison_naming_the_field(change: dict[str, Any], where: str) -> None:
    # Given the seed's success event with one field broken
    body = {**SEED_SUCCESS, **change}

    # When it is parsed, Then it is a poison message whose reason names the problem
    with pytest.raises(Poison) as caught:
        parse(body)
    assert where in caught.value.reason, caught.value.reason


def test_non_finite_numbers_are_poison() -> None:
    # Given a body with NaN, which Python's json module accepts
    body = json.dumps(SEED_SUCCESS).replace('"tokens_used": 45000', '"tokens_used": NaN')

    # When it is parsed, Then it is refused
    with pytest.raises(Poison):
        parse(body)


def test_a_10_mb_string_is_refused_before_it_is_parsed() -> None:
    # Given an event carrying a 10 MB error message
    body = json.dumps({**SEED_FAILURE, "error": {**SEED_FAILURE["error"], "error_message": "x" * 10_000_000}})

    # When it is parsed, Then it is poison for its size, not for its JSON
    with pytest.raises(Poison) as caught:
        parse(body)
    assert caught.value.code == "TOO_LARGE"


# --- final status -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcription", "llm", "expected"),
    [
        ("COMPLETED", "COMPLETED", "COMPLETED"),
        ("COMPLETED", "PARTIAL", "PARTIAL_SUCCESS"),
        ("COMPLETED", "FAILED", "PARTIAL_SUCCESS"),
        ("FAILED", "COMPLETED", "FAILED"),
        ("FAILED", None, "FAILED"),
        ("PARTIAL", "COMPLETED", "FAILED"),  # the seed's fall-through, kept
        ("COMPLETED", None, "FAILED"),  # no LLM result at all: the seed's fall-through, kept
        (None, "COMPLETED", "FAILED"),
    ],
)
def test_the_seeds_status_rules_hold_for_its_pipeline(
    transcription: str | None, llm: str | None, expected: str
) -> None:
    # Given results of the seed's two stages
    results = {k: v for k, v in (("transcription", transcription), ("llm_processing", llm)) if v}

    # When the final status is decided, Then it is the seed's
    assert determine_final_status(event_with(results)) == expected


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ({"sync": "COMPLETED", "download": "COMPLETED", "clips": "COMPLETED"}, "COMPLETED"),
        ({"sync": "FAILED", "download": "COMPLETED"}, "FAILED"),
        ({"sync": "COMPLETED", "download": "FAILED"}, "PARTIAL_SUCCESS"),
        ({"sync": "COMPLETED", "download": "PARTIAL"}, "PARTIAL_SUCCESS"),
        ({"sync": "PARTIAL", "download": "COMPLETED"}, "PARTIAL_SUCCESS"),
        ({"transcription": "COMPLETED", "clips": "FAILED"}, "PARTIAL_SUCCESS"),  # not only seed keys
    ],
)
def test_other_pipelines_follow_the_generic_rule(results: dict[str, str], expected: str) -> None:
    assert determine_final_status(event_with(results)) == expected


def test_a_failed_event_is_never_completed_and_an_unreported_error_stage_counts_as_failed() -> None:
    # Given a FAILED event whose reported stages all completed; and one that failed in an unreported stage
    all_done = event_with({"transcription": "COMPLETED", "llm_processing": "COMPLETED"}, status="FAILED")
    died_later = event_with(
        {"ingest": "COMPLETED"}, status="FAILED", error={"stage": "compact", "error_code": "OutOfMemory"}
    )
    nothing_ran = event_with({}, status="FAILED", error={"stage": "ingest", "error_code": "BadInput"})

    # Then neither is COMPLETED, and a pipeline that failed in its first stage failed
    assert determine_final_status(all_done) == "PARTIAL_SUCCESS"
    assert determine_final_status(died_later) == "PARTIAL_SUCCESS"
    assert determine_final_status(nothing_ran) == "FAILED"
    assert determine_final_status(event_with({}, status="COMPLETED")) == "COMPLETED"


# --- cost -------------------------------------------------------------------------------------------------


def test_cost_formula_matches_the_seeds_worked_example() -> None:
    # Given the seed's success event: 7,200 s of video and 45,000 tokens
    summary = Summary.of(parse(SEED_SUCCESS))

    # Then each term is the seed's rate applied to it
    assert transcribe_cost(7200) == Decimal("2.88")  # 120 min × $0.024
    assert bedrock_cost(45000) == Decimal("0.09045") + Decimal("0.22275")  # 67 % × $0.003/1K + 33 % × $0.015/1K
    # And the total is rounded to the cent, as is the job's summary
    assert calculate_cost(7200, 45000) == Decimal("3.19")
    assert summary.cost_usd == Decimal("3.19")
    assert summary.duration_seconds == 7380  # 10:00 → 12:03, the seed's output
    assert summary.documents_generated == 2


def test_cost_fixes_the_seeds_phantom_tokens_and_float_rounding() -> None:
    # Given a job with no LLM stage (the seed defaulted to 45,000 tokens = $0.31 never spent)
    no_llm = Summary.of(event_with({"transcription": "COMPLETED"}))
    # Then it costs nothing for tokens
    assert no_llm.tokens_used == 0 and no_llm.cost_usd == Decimal("0.00")
    # And an exact half cent rounds up (float round(2.675, 2) gives 2.67)
    assert transcribe_cost(6687.5) == Decimal("2.675")
    assert calculate_cost(6687.5, 0) == Decimal("2.68")


# --- subject and message ----------------------------------------------------------------------------------


def test_subject_keeps_the_seeds_wording() -> None:
    assert make_subject("COMPLETED", "meeting.mp4", ID) == "✅ Video Processing Completed - meeting.mp4"
    assert make_subject("FAILED", "meeting.mp4", ID) == "❌ Video Processing Failed - meeting.mp4"
    assert make_subject("FAILED", None, ID) == f"❌ Processing Failed - {ID}"


@pytest.mark.parametrize(
    "filename",
    [
        "a" * 300 + ".mp4",
        "line one\nline two\r\n\ttabbed\u2028sep " * 10,
        "e\u0301" * 80,  # e + combining acute: the cut must not leave a lone accent
        "👩\u200d💻" * 60,  # ZWJ sequences: the cut must not end on a joiner
        "invoice\u202egnp.exe" * 8,  # a right-to-left override would disguise the name
    ],
)
def test_long_or_multiline_filenames_give_a_safe_subject(filename: str) -> None:
    # Shifting the name by 0–2 characters moves the cut across every position of a 3-character cluster.
    for name in (filename, "x" + filename, "xx" + filename):
        # When a subject is made for an awkward file name
        subject = make_subject("COMPLETED", name, ID)

        # Then it fits SNS (under 100 characters, one line, no control characters) and keeps its fixed part
        assert len(subject) <= SUBJECT_LIMIT < 100
        assert subject.startswith("✅ Video Processing Completed - ")
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in subject)
        assert not any(unicodedata.category(c) == "Cf" and c != "\u200d" for c in subject)
        assert subject.endswith("…")
        # And the cut never leaves a joiner or a mark without the character it belongs to
        assert unicodedata.category(subject[-2]) not in ("Mn", "Me", "Cf"), ascii(subject[-4:])


def test_generic_pipeline_partial_message_lists_what_is_available() -> None:
    # Given a media pipeline whose sync and download stages worked but clips failed, without an error block
    event = parse(
        {
            "execution_id": ID,
            "status": "COMPLETED",
            "processing_results": {
                "sync": {"status": "COMPLETED"},
                "download": {"status": "COMPLETED", "media_uri": "s3://fleet-media/videos/m1/a.mp4"},
                "clips": {"status": "FAILED", "clips_uri": "s3://fleet-media/e1/clips/"},
            },
        }
    )
    summary = Summary.of(event)
    links = {"download": "https://example.test/a.mp4"}

    # When its notification is built
    note = build_notification(event, summary, links)

    # Then it is a partial success naming the failed stage, with every available output
    assert note.subject == f"⚠️ Processing Partially Completed - {ID}"
    assert note.message["error"] == {"stage": "clips", "code": "STAGE_FAILED", "message": "stage clips reported FAILED"}
    assert note.message["partial_results"] == {
        "sync": "Available",
        "download": "Available",
        "downloads": {"download": "https://example.test/a.mp4"},
    }
    assert note.message["actions"] == ["Review CloudWatch logs", "Contact support"]
    assert note.attributes["status"] == {"DataType": "String", "StringValue": "PARTIAL_SUCCESS"}


def test_seed_event_with_a_fresh_id_differs_only_in_its_id() -> None:
    fresh = seed_event(SEED_SUCCESS)
    assert fresh["execution_id"] != SEED_SUCCESS["execution_id"]
    assert {**fresh, "execution_id": ID} == SEED_SUCCESS
