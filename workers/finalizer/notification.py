"""The job's SNS notification (seeds/000 §5): subject, JSON body, attributes, and download links.

Everything here comes from a validated event, but it still ends up in an e-mail, so the subject is
rebuilt from safe characters and cut to SNS's limit without splitting a character, and links are built
only from checked `s3://` URIs: S3 console pages (need a console login, never expire) or presigned GETs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from botocore.exceptions import ClientError, ParamValidationError

from shared.errors import error_code
from workers.finalizer.models import FinalEvent, FinalStatus, StageResult, split_s3_uri
from workers.finalizer.status import SEED_STAGES
from workers.finalizer.summary import Summary, number

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sns import SNSClient

log = logging.getLogger("fleet.finalizer")

SUBJECT_LIMIT = 99  # SNS: "less than 100 characters", one line, no control characters
MIB = 1024 * 1024
ZWJ = "\u200d"

S3ClientFactory = Callable[[], AbstractAsyncContextManager["S3Client"]]

_HEADLINE: dict[FinalStatus, tuple[str, str]] = {
    "COMPLETED": ("✅", "Completed"),
    "PARTIAL_SUCCESS": ("⚠️", "Partially Completed"),
    "FAILED": ("❌", "Failed"),
}
_WHITESPACE = re.compile(r"\s+")
GENERIC_ACTIONS = ["Review CloudWatch logs", "Contact support"]


DEDUP_ATTRIBUTE = "fleet.dedup-id"


@dataclass(frozen=True)
class Notification:
    subject: str
    message: dict[str, Any]
    attributes: dict[str, Any]


# --- subject ---------------------------------------------------------------------------------------------


def _clean(name: str) -> str:
    """One line of visible text: whitespace runs become one space; control, separator and format
    characters (a right-to-left override would disguise `gnp.exe` as `exe.png`) are dropped, except the
    zero-width joiner that holds emoji sequences together. NFC first, so an accent and its letter are one
    character wherever Unicode has one."""
    name = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", name))
    kept = (
        c
        for c in name
        if unicodedata.category(c) not in ("Cc", "Zl", "Zp", "Cs") and (unicodedata.category(c) != "Cf" or c == ZWJ)
    )
    return "".join(kept).strip()


def _extends_previous(char: str) -> bool:
    """True for characters that belong to the character before them (accents, joiners, selectors)."""
    return unicodedata.category(char) in ("Mn", "Me", "Cf") or char == ZWJ


def _cut(text: str, budget: int) -> str:
    """`text` in at most `budget` characters, ending in "…" if shortened, never inside a cluster."""
    if len(text) <= budget:
        return text
    cut = budget - 1
    # Step back while the cut would separate a character from its accent, or the halves of a ZWJ sequence.
    while cut > 0 and (_extends_previous(text[cut]) or text[cut - 1] == ZWJ):
        cut -= 1
    return text[:cut].rstrip() + "…"


def make_subject(status: FinalStatus, filename: str | None, execution_id: str) -> str:
    icon, outcome = _HEADLINE[status]
    name = _clean(filename) if filename else ""
    prefix = f"{icon} Video Processing {outcome} - " if name else f"{icon} Processing {outcome} - "
    return prefix + _cut(name or execution_id, SUBJECT_LIMIT - len(prefix))


# --- body ------------------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _size_mb(size: int) -> float:
    return round(size / MIB, 2)


def _video(filename: str | None, transcription: StageResult | None, size: int | None) -> dict[str, Any]:
    video: dict[str, Any] = {"filename": filename} if filename else {}
    if transcription is not None and transcription.duration_seconds:
        video["duration"] = human_duration(transcription.duration_seconds)
    if size is not None:
        video["size_mb"] = _size_mb(size)
    return video


def _processing(summary: Summary) -> dict[str, Any]:
    processing: dict[str, Any] = {}
    if summary.started_at is not None:
        processing["started"] = _when(summary.started_at)
    processing["completed"] = _when(summary.completed_at)
    if summary.duration_seconds is not None:
        processing["duration"] = human_duration(summary.duration_seconds)
    processing["cost_usd"] = number(summary.cost_usd)
    return processing


def _seed_results(event: FinalEvent, links: dict[str, str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    transcription = event.processing_results.get("transcription")
    if transcription is not None:
        entry: dict[str, Any] = {}
        if transcription.speakers_detected is not None:
            entry["speakers"] = transcription.speakers_detected
        if "transcription" in links:
            entry["download"] = links["transcription"]
        results["transcription"] = entry
    llm = event.processing_results.get("llm_processing")
    if llm is not None:
        documents: dict[str, Any] = {}
        if llm.documents_generated:
            documents["types"] = [d[:1].upper() + d[1:] for d in llm.documents_generated]
        if llm.document_size_bytes is not None:
            documents["size_mb"] = _size_mb(llm.document_size_bytes)
        if "llm_processing" in links:
            documents["download"] = links["llm_processing"]
        results["documents"] = documents
    return results


def _generic_results(event: FinalEvent, links: dict[str, str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, result in event.processing_results.items():
        entry: dict[str, Any] = {"status": result.status}
        if name in links:
            entry["download"] = links[name]
        results[name] = entry
    return results


def _error(event: FinalEvent, summary: Summary) -> dict[str, str]:
    if event.error is not None:
        return {
            "stage": event.error.stage or "unknown",
            "code": event.error.error_code,
            "message": event.error.error_message,
        }
    failed = next((n for n, s in summary.stages.items() if s == "FAILED"), None)
    stage = failed or next((n for n, s in summary.stages.items() if s != "COMPLETED"), "unknown")
    status = summary.stages.get(stage, "FAILED")
    return {"stage": stage, "code": "STAGE_FAILED", "message": f"stage {stage} reported {status}"}


def _partial_results(event: FinalEvent, summary: Summary, links: dict[str, str], seed: bool) -> dict[str, Any]:
    available = [name for name, status in summary.stages.items() if status == "COMPLETED"]
    if not available:
        return {}
    if seed:
        partial: dict[str, Any] = {name: "Available" for name in available}
        if "transcription" in links:
            partial["download"] = links["transcription"]
        return partial
    partial = {name: "Available" for name in available}
    downloads = {name: links[name] for name in available if name in links}
    if downloads:
        partial["downloads"] = downloads
    return partial


def _actions(error: dict[str, str]) -> list[str]:
    if error["stage"] == "llm_processing" or "Bedrock" in error["code"]:
        return ["Check AWS Bedrock quotas", *GENERIC_ACTIONS]
    if error["stage"] == "transcription":
        return ["Check the transcription job and the source video", *GENERIC_ACTIONS]
    return list(GENERIC_ACTIONS)


def build_notification(
    event: FinalEvent,
    summary: Summary,
    links: dict[str, str],
    *,
    video_key: str | None = None,
    video_size: int | None = None,
) -> Notification:
    """The seed's success shape for COMPLETED jobs, its failure shape otherwise (with what is left)."""
    filename = video_key.rsplit("/", 1)[-1] if video_key else None
    seed = bool(summary.stages) and set(summary.stages) <= SEED_STAGES
    status = summary.final_status
    message: dict[str, Any] = {"status": status, "execution_id": summary.execution_id}
    video = _video(filename, event.processing_results.get("transcription"), video_size)
    if video:
        message["video"] = video
    message["processing"] = _processing(summary)
    if status == "COMPLETED":
        message["results"] = _seed_results(event, links) if seed else _generic_results(event, links)
    else:
        error = _error(event, summary)
        message["error"] = error
        partial = _partial_results(event, summary, links, seed)
        if partial:
            message["partial_results"] = partial
        message["actions"] = _actions(error)
    attributes = {
        "execution_id": {"DataType": "String", "StringValue": summary.execution_id},
        "status": {"DataType": "String", "StringValue": status},
        "cost_usd": {"DataType": "Number", "StringValue": str(number(summary.cost_usd))},
        DEDUP_ATTRIBUTE: {"DataType": "String", "StringValue": dedup_id(summary.execution_id, status)},
    }
    return Notification(make_subject(status, filename, summary.execution_id), clean_body(message), attributes)


def clean_body(value: Any) -> Any:
    """Every string of the notification's body cleaned as the subject is: one visible line, no control,
    separator or bidi-override characters (an event's error message or key may carry any of them)."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {k: clean_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_body(v) for v in value]
    return value


# --- links -----------------------------------------------------------------------------------------------


def console_link(uri: str, region: str) -> str:
    bucket, key = split_s3_uri(uri)  # the URI was validated with the event
    return (
        f"https://s3.console.aws.amazon.com/s3/object/{bucket}"
        f"?region={quote(region, safe='')}&prefix={quote(key, safe='/')}"
    )


class DownloadLinks:
    """S3 URIs as links: S3 console pages (need a console login, never expire) or presigned GET URLs."""

    def __init__(
        self,
        open_s3: S3ClientFactory,
        *,
        mode: Literal["console", "presigned"],
        region: str,
        expires_seconds: int,
        presign_buckets: Collection[str] = (),
    ) -> None:
        self._open_s3 = open_s3
        self.mode = mode
        self.region = region
        self.expires_seconds = expires_seconds
        self.presign_buckets = frozenset(presign_buckets)

    async def for_stages(self, event: FinalEvent, *, include_failed: bool) -> dict[str, str]:
        """One link per stage that has an output: its primary URI. Failed stages' outputs only on request."""
        links: dict[str, str] = {}
        for name, result in event.processing_results.items():
            uris = result.uris()
            if uris and (include_failed or result.status != "FAILED"):
                links[name] = await self.link(uris[0])
        return links

    async def link(self, uri: str) -> str:
        if self.mode == "console":
            return console_link(uri, self.region)
        bucket, key = split_s3_uri(uri)
        if bucket not in self.presign_buckets:
            # The event is untrusted: a presigned URL is a key to the object for whoever reads the notice.
            log.warning("no presigned link for a bucket outside the allowlist", extra={"bucket": bucket})
            return console_link(uri, self.region)
        async with self._open_s3() as s3:
            return await s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expires_seconds
            )


async def object_size(s3: S3Client, bucket: str | None, key: str | None) -> int | None:
    """The video's size for the message; unknown (None) rather than a failure when it cannot be read."""
    if not bucket or not key:
        return None
    try:
        head = await s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None
    return int(head["ContentLength"])


# --- publishing ------------------------------------------------------------------------------------------


def dedup_id(execution_id: str, status: str) -> str:
    """The same for every attempt to announce one job's final status: subscribers drop repeats by it, and a
    FIFO topic does so itself (`MessageDeduplicationId`)."""
    return hashlib.sha256(f"{execution_id}#{status}".encode()).hexdigest()[:40]


# Errors after which SNS certainly did not publish: trying again cannot duplicate the notification.
NOT_PUBLISHED = frozenset({"Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded"})
PUBLISH_ATTEMPTS = 3


class Notifier:
    """Publishes each notification once, as far as SNS allows.

    The client does not retry on its own (`sns_once`): botocore would send a Publish again after a lost reply,
    and the notification would go out twice. Here a Publish is tried again only when SNS certainly did not
    take it (throttling), or when the topic is FIFO (its deduplication id makes a repeat harmless). Every
    notification carries `fleet.dedup-id`, the same on every attempt for one job and final status.
    """

    def __init__(
        self,
        sns: SNSClient,
        topic_name: str,
        *,
        topic_arn: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sns = sns
        self.topic_name = topic_name
        self._topic_arn = topic_arn
        self._sleep = sleep

    async def topic_arn(self) -> str:
        if self._topic_arn is None:
            async for page in self._sns.get_paginator("list_topics").paginate():
                for topic in page.get("Topics", []):
                    if topic["TopicArn"].rsplit(":", 1)[-1] == self.topic_name:
                        self._topic_arn = topic["TopicArn"]
                        return self._topic_arn
            raise LookupError(f"SNS topic {self.topic_name!r} not found")
        return self._topic_arn

    async def publish(self, notification: Notification) -> bool:
        """Publish; a failure is logged and reported, never raised (the job is already final)."""
        try:
            arn = await self.topic_arn()
        except Exception as exc:
            log.error("notification not sent", extra={"error_code": error_code(exc) or type(exc).__name__})
            return False
        fifo = arn.endswith(".fifo")
        dedup = notification.attributes[DEDUP_ATTRIBUTE]["StringValue"]
        extra: dict[str, Any] = (
            {"MessageGroupId": notification.message["execution_id"], "MessageDeduplicationId": dedup} if fifo else {}
        )
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._sns.publish(
                    TopicArn=arn,
                    Subject=notification.subject,
                    Message=json.dumps(notification.message, ensure_ascii=False),
                    MessageAttributes=notification.attributes,
                    **extra,
                )
            except Exception as exc:
                code = error_code(exc) or type(exc).__name__
                again = attempt < PUBLISH_ATTEMPTS and (fifo or code in NOT_PUBLISHED)
                log.log(
                    logging.WARNING if again else logging.ERROR,
                    "notification not sent" if not again else "notification not sent; trying again",
                    extra={
                        "error_code": code,
                        "error": str(exc)[:300],
                        "attempt": attempt,
                        # a lost reply or a 5xx may hide a Publish that took effect
                        "maybe_sent": code not in NOT_PUBLISHED and not isinstance(exc, ParamValidationError),
                    },
                )
                if not again:
                    return False
                await self._sleep(0.2 * 2 ** (attempt - 1))
                continue
            log.info("notification sent", extra={"status": notification.attributes["status"]["StringValue"]})
            return True
        return False
