"""The runtime's decisions, as pure functions: no emulator, microseconds each."""

from __future__ import annotations

import random

import pytest

from shared import attributes as attrs
from shared.errors import Fatal, Poison, Retry, Transient
from shared.fate import MessageLost, Outcome, decide, visibility_left
from shared.settings import WorkerTuning
from shared.settler import DeadLetterRefused, attribute_bytes, dead_letter_attributes
from shared.stage import Message

TUNING = WorkerTuning(max_attempts=3, backoff_base=2, backoff_max=60)
PLENTY = 40_000.0


def test_success_is_deleted_and_a_lost_message_is_left_alone() -> None:
    assert decide(None, attempt=1, tuning=TUNING, visibility_left=PLENTY).outcome is Outcome.SUCCEEDED
    assert decide(MessageLost("gone"), attempt=1, tuning=TUNING, visibility_left=PLENTY).outcome is Outcome.LOST


@pytest.mark.parametrize("error", [Fatal("corrupt"), Poison("not json")])
def test_fatal_and_poison_dead_letter_at_once(error: Fatal) -> None:
    fate = decide(error, attempt=1, tuning=TUNING, visibility_left=PLENTY)
    assert fate.outcome is Outcome.DEAD_LETTERED and fate.error is error


def test_retryable_errors_back_off_until_the_last_attempt_then_dead_letter_with_the_count() -> None:
    # Given a transient error on each attempt
    rng = random.Random(1)
    fates = [decide(Transient("503"), attempt=n, tuning=TUNING, visibility_left=PLENTY, rng=rng) for n in (1, 2, 3)]
    # Then the delays grow, and the third failure gives up naming the attempts
    assert [f.outcome for f in fates] == [Outcome.RETRYING, Outcome.RETRYING, Outcome.DEAD_LETTERED]
    assert fates[0].delay is not None and fates[1].delay is not None and fates[0].delay < fates[1].delay
    assert fates[2].error is not None and fates[2].error.reason == "gave up after 3 attempts: 503"
    assert isinstance(fates[2].error, Transient)


def test_a_requested_delay_is_kept_and_capped_at_what_sqs_allows() -> None:
    assert decide(Retry("later", delay=7.2), attempt=1, tuning=TUNING, visibility_left=PLENTY).delay == 8
    capped = decide(Retry("tomorrow", delay=43_200), attempt=1, tuning=TUNING, visibility_left=1_000.7)
    assert capped.delay == 1_000 and capped.note is not None and "12 h" in capped.note


def test_what_is_left_of_the_12h_counts_from_receipt() -> None:
    assert visibility_left(received_at=1_000.0, now=1_000.0) == 43_195
    assert visibility_left(received_at=1_000.0, now=1_000.0 + 43_200) == 0


def message(body: str = "{}", **attributes: str) -> Message:
    return Message(
        id="m-1",
        receipt_handle="r",
        body=body,
        receive_count=2,
        sent_at=None,
        attributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
        failures=1,
        origin_id="first-copy",
    )


def test_a_dead_letter_names_its_source_and_keeps_the_producers_attributes() -> None:
    letter = dead_letter_attributes(
        message(**{attrs.JOB_ID: "job-1", "trace": "t"}), Fatal("no", code="X"), worker="w", source_queue="q"
    )
    values = {k: v["StringValue"] for k, v in letter.attributes.items()}
    assert values[attrs.SOURCE_MESSAGE_ID] == "first-copy"
    assert values[attrs.ATTEMPTS] == "3"  # one failure before this copy + its second receive
    assert values[attrs.JOB_ID] == "job-1" and values["trace"] == "t" and letter.dropped == ()


def test_a_body_near_the_limit_keeps_the_reason_short_and_drops_what_does_not_fit() -> None:
    # Given a body that leaves little room under a 256 KiB DLQ, and a long reason
    limit = 256 * 1024
    body = "x" * (limit - 400)
    m = message(body, **{attrs.JOB_ID: "job-1", "big": "y" * 300})
    # When its dead letter is built
    letter = dead_letter_attributes(m, Fatal("r" * 900), worker="w", source_queue="q", max_bytes=limit)
    # Then it fits: the reason is cut, the big attribute dropped (and named), the job id kept
    size = len(body) + sum(attribute_bytes(k, v) for k, v in letter.attributes.items())
    assert size <= limit
    assert letter.dropped == ("big",)
    assert attrs.JOB_ID in letter.attributes
    assert len(letter.attributes[attrs.ERROR]["StringValue"]) == 100
    # And a body with no room at all is refused, so the message stays on its queue
    with pytest.raises(DeadLetterRefused):
        dead_letter_attributes(message("x" * limit), Fatal("r"), worker="w", source_queue="q", max_bytes=limit)


def test_counts_and_ids_from_attributes_are_untrusted() -> None:
    raw = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "1"},
        "MessageAttributes": {
            attrs.FAILURES: {"DataType": "Number", "StringValue": "1e9"},
            attrs.ORIGIN_ID: {"DataType": "String", "StringValue": "../../x\n"},
        },
    }
    m = Message.from_sqs(raw)  # type: ignore[arg-type]
    assert (m.failures, m.origin_id, m.attempt) == (0, "m", 1)
