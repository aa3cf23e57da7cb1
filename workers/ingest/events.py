"""S3 event notifications → the files they announce, validated as the untrusted input they are.

A notification may arrive raw or inside an SNS envelope (shared.envelope). Keys are URL-encoded with `+`
for spaces (real S3 and moto alike). Only `ObjectCreated:*` records announce a file; `s3:TestEvent` and
other event types are acknowledged and ignored. A record that claims to be a created object but breaks
a rule (another bucket, a key outside the landing prefix, a malformed eTag...) is *invalid*: the valid
records of its message are still tracked, then the message is dead-lettered with counts of what was
wrong — never the keys themselves, which may be sensitive.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from shared.envelope import unwrap
from shared.errors import Poison
from workers.ingest.layout import ETAG_RE, MAX_KEY_BYTES, valid_date

MAX_RECORDS = 1000
MAX_OBJECT_BYTES = 50 * 1024**4  # S3's largest object (50 TiB); DynamoDB numbers hold 38 digits
SEQUENCER_RE = re.compile(r"^[0-9A-Fa-f]{1,64}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FileEvent:
    """One announced object. `identity` (eTag, else sequencer) tells two versions of a key apart, so a
    re-upload with new content is a new file while a repeated notification is not."""

    bucket: str
    key: str
    size: int
    identity: str
    event_name: str
    event_time: str
    date_prefix: str
    sequencer: str | None = None


@dataclass
class Notification:
    files: list[FileEvent] = field(default_factory=list)
    test_event: bool = False
    ignored: int = 0
    invalid: Counter[str] = field(default_factory=Counter)

    def invalid_summary(self) -> str:
        parts = ", ".join(f"{reason} ({n})" for reason, n in sorted(self.invalid.items()))
        return f"{sum(self.invalid.values())} invalid S3 records: {parts}"


class Invalid(Exception):
    """A record that must not be tracked; the message names the rule, never the key."""


class Ignored(Exception):
    """A record that is not about a new file (another event type, a folder placeholder)."""


def parse_notification(body: str, *, buckets: Collection[str], landing_prefix: str) -> Notification:
    data = unwrap(body)
    if not isinstance(data, dict):
        raise Poison("not an S3 event notification: body is not an object", code="NOT_S3_EVENT")
    if data.get("Event") == "s3:TestEvent":
        return Notification(test_event=True)
    records = data.get("Records")
    if not isinstance(records, list):
        raise Poison("not an S3 event notification: no Records list", code="NOT_S3_EVENT")
    if len(records) > MAX_RECORDS:
        raise Poison(f"{len(records)} records in one notification (max {MAX_RECORDS})", code="TOO_LARGE")
    out = Notification()
    for record in records:
        try:
            out.files.append(parse_record(record, buckets=buckets, landing_prefix=landing_prefix))
        except Ignored:
            out.ignored += 1
        except Invalid as exc:
            out.invalid[str(exc)] += 1
    return out


def parse_record(record: Any, *, buckets: Collection[str], landing_prefix: str) -> FileEvent:
    if not isinstance(record, dict):
        raise Invalid("record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise Invalid("no eventName")
    if not name.startswith("ObjectCreated:"):
        raise Ignored
    source = record.get("eventSource", "aws:s3")
    if source != "aws:s3":
        raise Invalid("eventSource is not aws:s3")
    s3 = record.get("s3")
    if not isinstance(s3, dict) or not isinstance(s3.get("bucket"), dict) or not isinstance(s3.get("object"), dict):
        raise Invalid("no s3.bucket / s3.object")
    bucket = s3["bucket"].get("name")
    if not isinstance(bucket, str) or bucket not in buckets:
        raise Invalid("bucket not accepted")
    obj: dict[str, Any] = s3["object"]
    key = _key(obj.get("key"), landing_prefix)
    size = obj.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Invalid("size is not a non-negative integer")
    if size > MAX_OBJECT_BYTES:
        raise Invalid("size is larger than an S3 object can be")
    sequencer = obj.get("sequencer")
    if sequencer is not None and (not isinstance(sequencer, str) or not SEQUENCER_RE.match(sequencer)):
        raise Invalid("malformed sequencer")
    identity = _identity(obj.get("eTag"), sequencer)
    event_time = _event_time(record.get("eventTime"))
    return FileEvent(
        bucket=bucket,
        key=key,
        size=size,
        identity=identity,
        event_name=name,
        event_time=event_time.isoformat().replace("+00:00", "Z"),
        date_prefix=date_prefix(key, landing_prefix, event_time),
        sequencer=sequencer,
    )


def _key(raw: Any, landing_prefix: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise Invalid("no object key")
    key = unquote_plus(raw)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise Invalid(f"key longer than {MAX_KEY_BYTES} bytes")
    if CONTROL_RE.search(key):
        raise Invalid("control characters in key")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("key is not valid UTF-8") from None
    if not key.startswith(landing_prefix):
        raise Invalid("key outside the landing prefix")
    if key.endswith("/"):
        raise Ignored  # a "folder" placeholder, not a file
    return key


def _identity(etag: Any, sequencer: str | None) -> str:
    if etag is not None:
        if not isinstance(etag, str):
            raise Invalid("malformed eTag")
        normalized = etag.strip('"').lower()
        if not ETAG_RE.match(normalized):
            raise Invalid("malformed eTag")
        return normalized
    if sequencer:
        return f"seq-{sequencer.upper()}"
    raise Invalid("neither eTag nor sequencer")


def _event_time(raw: Any) -> datetime:
    if not isinstance(raw, str):
        raise Invalid("no eventTime")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid("malformed eventTime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def date_prefix(key: str, landing_prefix: str, event_time: datetime) -> str:
    """The first `YYYY-MM-DD` folder under the landing prefix, else the event's (UTC) date."""
    folders = key[len(landing_prefix) :].split("/")[:-1]
    for folder in folders:
        if valid_date(folder):
            return folder
    return event_time.date().isoformat()
