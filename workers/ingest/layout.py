"""Where things live: lake keys, fleet-files item keys, and the manifest's JSON shape (contracts.md).

Every key built here comes from a validated date and a uuid we generated, never from a user's S3 key:
user keys are data inside a manifest, not parts of a path.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ETAG_RE = re.compile(r"^[0-9a-f]{32}(-\d{1,5})?$")
# DynamoDB caps a sort key at 1,024 bytes; "f#" + bucket (≤ 63) + "/" + key + "#" + etag (≤ 38) fits.
MAX_KEY_BYTES = 900

FILE_PREFIX = "f#"
MANIFEST_PREFIX = "m#"
SLOT_KEY = "d#slot"  # per date: which manifest (if any) is being filled right now

# `todo` is the hash key of the sparse "todo" index: an item is in it only while work is owed on it.
TODO_PENDING = "pending-file"
TODO_MANIFEST = "open-manifest"


def valid_date(value: str) -> bool:
    if not DATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def check_date(value: str) -> str:
    if not valid_date(value):
        raise ValueError(f"not a YYYY-MM-DD date: {value[:32]!r}")
    return value


def check_manifest_id(value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError("manifest_id is not a uuid") from None
    if str(parsed) != value:
        raise ValueError("manifest_id must be a lower-case, hyphenated uuid")
    return value


def manifest_key(date_prefix: str, manifest_id: str) -> str:
    return f"manifests/{check_date(date_prefix)}/{check_manifest_id(manifest_id)}.json"


def parquet_key(date_prefix: str, manifest_id: str) -> str:
    return f"parquet/date={check_date(date_prefix)}/{check_manifest_id(manifest_id)}.parquet"


def quarantine_key(manifest_id: str) -> str:
    return f"quarantine/{check_manifest_id(manifest_id)}.ndjson"


def file_item_key(bucket: str, key: str, etag: str) -> str:
    return f"{FILE_PREFIX}{bucket}/{key}#{etag}"


def manifest_item_key(manifest_id: str) -> str:
    return f"{MANIFEST_PREFIX}{manifest_id}"


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1)
    size: int = Field(ge=0)
    etag: str = Field(min_length=1, max_length=80)


class Manifest(BaseModel):
    """The manifest JSON in fleet-lake (contracts.md)."""

    model_config = ConfigDict(extra="ignore")

    manifest_id: str
    date_prefix: str
    created_at: str
    files: list[ManifestFile] = Field(min_length=1)

    _id = field_validator("manifest_id")(check_manifest_id)
    _date = field_validator("date_prefix")(check_date)


class CompactJob(BaseModel):
    """The `fleet-compact` message (contracts.md). The manifest key must be exactly the one the id and
    date name: a job cannot point the worker at any other object."""

    model_config = ConfigDict(extra="ignore")

    manifest_id: str
    date_prefix: str
    manifest_key: str

    _id = field_validator("manifest_id")(check_manifest_id)
    _date = field_validator("date_prefix")(check_date)

    @field_validator("manifest_key")
    @classmethod
    def _key_matches(cls, value: str) -> str:
        if not value.startswith("manifests/") or not value.endswith(".json") or len(value) > 100:
            raise ValueError("manifest_key must be manifests/YYYY-MM-DD/<uuid>.json")
        return value

    @model_validator(mode="after")
    def _key_names_the_manifest(self) -> Self:
        if self.manifest_key != manifest_key(self.date_prefix, self.manifest_id):
            raise ValueError("manifest_key does not match manifest_id and date_prefix")
        return self
