"""Messages, listing entries and S3 keys. Everything here comes from outside (SQS, the provider), so it is
validated, bounded and sanitised before it names an object or a table item."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# An id becomes a DynamoDB key, a URL path segment and an S3 key segment: keep it boring.
MediaId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RUNS = re.compile(r"_{2,}")
_BEFORE_DOT = re.compile(r"_+\.")
MAX_FILENAME = 200


class SyncRequest(BaseModel):
    """`fleet-sync`: `{"action": "sync"}`."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["sync"]


class DownloadJob(BaseModel):
    """`fleet-download`: `{"media_id", "filename", "size"?, "download_url"?}` (shared/contracts.md)."""

    model_config = ConfigDict(extra="forbid")

    media_id: MediaId
    filename: str = Field(min_length=1, max_length=1024)
    size: int | None = Field(None, ge=0)
    download_url: str | None = Field(None, max_length=4096)


class ListedMedia(BaseModel):
    """One entry of the provider's listing; entries that fail this are skipped and counted, not enqueued."""

    model_config = ConfigDict(extra="ignore")

    id: MediaId
    filename: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0)
    created_at: str | None = None
    content_type: str | None = None


class ListingPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    media: list[dict[str, object]]
    page: int = Field(ge=1)
    pages: int = Field(ge=0)


def safe_filename(name: str) -> str:
    """A provider's filename as the last segment of an S3 key: no paths, no control or odd characters.

    `../../etc/passwd` -> `passwd`; `clip\x00.mp4` -> `clip.mp4`; `été 1!.mov` -> `ete_1.mov`; `..` -> `file`.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = "".join(ch for ch in name if ch.isprintable())
    name = _BEFORE_DOT.sub(".", _RUNS.sub("_", _UNSAFE.sub("_", name))).strip("._-")
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = (stem if keep else name)[: MAX_FILENAME - len(keep) - 1].rstrip("._-") + ("." + keep if keep else "")
    return name or "file"


def object_key(prefix: str, media_id: str, filename: str) -> str:
    """`videos/<media_id>/<filename>` (shared/contracts.md)."""
    return f"{prefix}{media_id}/{safe_filename(filename)}"
