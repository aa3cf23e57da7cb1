"""`fleet-files`: one table for file records, manifest records and a per-date slot.

    date_prefix (HASH)  file_key (RANGE)              what
    2024-05-01          f#<bucket>/<key>#<etag>        a tracked file: pending → manifested → compacted
    2024-05-01          m#<manifest_id>                a manifest: CLAIMING → SEALED (or EMPTY) →
                                                       SUBMITTED → COMPACTED
    2024-05-01          d#slot                         which manifest of that date is being filled, if any

The sparse index `todo` (HASH `todo`, RANGE `todo_order`) holds only items that still owe work:
pending files (`todo = pending-file`, ordered by date then tracking time, so the oldest pending file of
a date is the first of its range) and open manifests (`todo = open-manifest`, ordered by lease expiry,
so the sweeper asks only for the expired ones). Claiming a file or submitting a manifest removes the
two attributes and with them the index entry — the index stays as small as the work in flight.
One index partition takes ~1,000 writes/s: ~3,000× the seed's peak of 0.28 files/s. Beyond that,
shard the hash (`pending-file#0..N`) and query the shards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from shared.errors import Transient, is_conditional_failure, owned, written
from workers.ingest.events import FileEvent
from workers.ingest.layout import (
    MANIFEST_PREFIX,
    SLOT_KEY,
    TODO_MANIFEST,
    TODO_PENDING,
    file_item_key,
    manifest_item_key,
    manifest_key,
)

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

TODO_INDEX = "todo"

# file states
PENDING = "pending"
MANIFESTED = "manifested"
COMPACTED = "compacted"
# manifest states
CLAIMING = "CLAIMING"
SEALED = "SEALED"
SUBMITTED = "SUBMITTED"
MANIFEST_COMPACTED = "COMPACTED"
EMPTY = "EMPTY"  # every candidate was claimed elsewhere first: nothing to hand off

Item = dict[str, Any]


def S(value: str) -> dict[str, str]:
    return {"S": value}


def N(value: float) -> dict[str, str]:
    return {"N": str(value)}


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso_at(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class FileRef:
    """A file as a manifest lists it."""

    file_key: str
    bucket: str
    key: str
    size: int
    etag: str

    def entry(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "etag": self.etag}

    def to_attr(self) -> Item:
        # The item key is derived, not stored: a manifest record lists up to 300 of these, and an item
        # holds 400 KB.
        return {"M": {"bucket": S(self.bucket), "key": S(self.key), "size": N(self.size), "etag": S(self.etag)}}

    @classmethod
    def from_attr(cls, attr: Item) -> FileRef:
        m = attr["M"]
        bucket, key, etag = m["bucket"]["S"], m["key"]["S"], m["etag"]["S"]
        return cls(file_item_key(bucket, key, etag), bucket, key, int(m["size"]["N"]), etag)


@dataclass(frozen=True)
class PendingFile:
    date_prefix: str
    ref: FileRef
    tracked_at: str

    @classmethod
    def from_item(cls, item: Item) -> PendingFile:
        return cls(
            date_prefix=item["date_prefix"]["S"],
            ref=FileRef(
                file_key=item["file_key"]["S"],
                bucket=item["bucket"]["S"],
                key=item["key"]["S"],
                size=int(item["size"]["N"]),
                etag=item["etag"]["S"],
            ),
            tracked_at=item["tracked_at"]["S"],
        )

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - parse_iso(self.tracked_at)).total_seconds()


@dataclass(frozen=True)
class OpenManifest:
    date_prefix: str
    manifest_id: str
    state: str
    lease: str  # `todo_order`: when the sweeper may take it over


@dataclass
class ManifestRecord:
    manifest_id: str
    date_prefix: str
    created_at: str
    state: str
    candidates: list[FileRef]  # while CLAIMING: the files it may claim, and no others
    files: list[FileRef]  # once SEALED: the files it did claim
    recovered: bool = False

    @classmethod
    def from_item(cls, item: Item) -> ManifestRecord:
        return cls(
            manifest_id=item["manifest_id"]["S"],
            date_prefix=item["date_prefix"]["S"],
            created_at=item["created_at"]["S"],
            state=item["state"]["S"],
            candidates=[FileRef.from_attr(a) for a in item.get("candidates", {}).get("L", [])],
            files=[FileRef.from_attr(a) for a in item.get("files", {}).get("L", [])],
        )


class FilesTable:
    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    def key(self, date_prefix: str, file_key: str) -> Item:
        return {"date_prefix": S(date_prefix), "file_key": S(file_key)}

    # --- files -----------------------------------------------------------------------------------

    async def track(self, event: FileEvent) -> bool:
        """Record a file once; False when this object (key + eTag) was already tracked."""
        tracked_at = iso()
        fk = file_item_key(event.bucket, event.key, event.identity)
        item: Item = {
            **self.key(event.date_prefix, fk),
            "kind": S("file"),
            "bucket": S(event.bucket),
            "key": S(event.key),
            "size": N(event.size),
            "etag": S(event.identity),
            "event_name": S(event.event_name),
            "event_time": S(event.event_time),
            "tracked_at": S(tracked_at),
            "status": S(PENDING),
            "todo": S(TODO_PENDING),
            "todo_order": S(f"{event.date_prefix}#{tracked_at}"),
        }
        if event.sequencer:
            item["sequencer"] = S(event.sequencer)
        token = uuid.uuid4().hex
        item["tracked_by"] = S(token)
        return await written(
            self._ddb.put_item,
            mine=owned("tracked_by", token),
            TableName=self.table,
            Item=item,
            ConditionExpression="attribute_not_exists(file_key)",
        )

    async def count_pending(self, date_prefix: str, limit: int) -> int:
        resp = await self._ddb.query(
            TableName=self.table,
            IndexName=TODO_INDEX,
            KeyConditionExpression="#t = :t AND begins_with(todo_order, :d)",
            ExpressionAttributeNames={"#t": "todo"},
            ExpressionAttributeValues={":t": S(TODO_PENDING), ":d": S(f"{date_prefix}#")},
            Select="COUNT",
            Limit=limit,
        )
        return int(resp.get("Count", 0))

    async def pending(self, date_prefix: str, limit: int) -> list[PendingFile]:
        """The date's oldest pending files (the index is eventually consistent: claims re-check)."""
        out: list[PendingFile] = []
        start: Item | None = None
        while len(out) < limit:
            kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            resp = await self._ddb.query(
                TableName=self.table,
                IndexName=TODO_INDEX,
                KeyConditionExpression="#t = :t AND begins_with(todo_order, :d)",
                ExpressionAttributeNames={"#t": "todo"},
                ExpressionAttributeValues={":t": S(TODO_PENDING), ":d": S(f"{date_prefix}#")},
                Limit=limit - len(out),
                **kwargs,
            )
            out += [PendingFile.from_item(i) for i in resp.get("Items", [])]
            start = resp.get("LastEvaluatedKey")
            if not start:
                break
        return out

    async def first_pending(self, after_date: str | None = None) -> PendingFile | None:
        """The oldest pending file of the first date (after `after_date`) that has any."""
        values: Item = {":t": S(TODO_PENDING)}
        condition = "#t = :t"
        if after_date is not None:
            # "$" sorts right after "#": skips every `<after_date>#...` entry.
            condition += " AND todo_order >= :next"
            values[":next"] = S(f"{after_date}$")
        resp = await self._ddb.query(
            TableName=self.table,
            IndexName=TODO_INDEX,
            KeyConditionExpression=condition,
            ExpressionAttributeNames={"#t": "todo"},
            ExpressionAttributeValues=values,
            Limit=1,
        )
        items = resp.get("Items", [])
        return PendingFile.from_item(items[0]) if items else None

    # --- manifests -------------------------------------------------------------------------------

    async def open_manifests(self) -> list[OpenManifest]:
        out: list[OpenManifest] = []
        start: Item | None = None
        while True:
            kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            resp = await self._ddb.query(
                TableName=self.table,
                IndexName=TODO_INDEX,
                KeyConditionExpression="#t = :t",
                ExpressionAttributeValues={":t": S(TODO_MANIFEST)},
                ProjectionExpression="date_prefix, file_key, #st, todo_order",
                ExpressionAttributeNames={"#t": "todo", "#st": "state"},
                **kwargs,
            )
            for item in resp.get("Items", []):
                out.append(
                    OpenManifest(
                        date_prefix=item["date_prefix"]["S"],
                        manifest_id=item["file_key"]["S"][len(MANIFEST_PREFIX) :],
                        state=item["state"]["S"],
                        lease=item["todo_order"]["S"],
                    )
                )
            start = resp.get("LastEvaluatedKey")
            if not start:
                return out

    async def take_slot(self, date_prefix: str, manifest_id: str, lease_until: float) -> bool:
        """Become the date's one filling manifest, if none is (or its lease ran out)."""
        return await written(
            self._ddb.update_item,
            mine=owned("open_manifest", manifest_id),
            TableName=self.table,
            Key=self.key(date_prefix, SLOT_KEY),
            UpdateExpression="SET open_manifest = :m, open_until = :until",
            ConditionExpression="attribute_not_exists(open_manifest) OR open_until < :now",
            ExpressionAttributeValues={
                ":m": S(manifest_id),
                ":until": N(lease_until),
                ":now": N(time.time()),
            },
        )

    async def free_slot(self, date_prefix: str, manifest_id: str) -> None:
        await written(
            self._ddb.update_item,
            TableName=self.table,
            Key=self.key(date_prefix, SLOT_KEY),
            UpdateExpression="REMOVE open_manifest, open_until",
            ConditionExpression="open_manifest = :m",
            ExpressionAttributeValues={":m": S(manifest_id)},
        )

    async def open_record(self, record: ManifestRecord, owner: str, lease_until: float) -> bool:
        """Write the CLAIMING record; False if a record with this id exists and is not this owner's."""
        return await written(
            self._ddb.put_item,
            mine=owned("owner", owner),
            TableName=self.table,
            Item={
                **self.key(record.date_prefix, manifest_item_key(record.manifest_id)),
                "kind": S("manifest"),
                "manifest_id": S(record.manifest_id),
                "manifest_key": S(manifest_key(record.date_prefix, record.manifest_id)),
                "state": S(CLAIMING),
                "owner": S(owner),
                "created_at": S(record.created_at),
                "candidates": {"L": [f.to_attr() for f in record.candidates]},
                **({"candidate_keys": {"SS": [f.file_key for f in record.candidates]}} if record.candidates else {}),
                "todo": S(TODO_MANIFEST),
                "todo_order": S(iso_at(lease_until)),
            },
            ConditionExpression="attribute_not_exists(file_key)",
        )

    async def claim(self, date_prefix: str, ref: FileRef, manifest_id: str) -> bool:
        """pending → manifested for this manifest. True if the file is (now or already) this
        manifest's: a retried request that had succeeded fails its condition, yet the file is ours."""
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=self.key(date_prefix, ref.file_key),
                UpdateExpression="SET #s = :manifested, manifest_id = :m, manifested_at = :now REMOVE #t, todo_order",
                ConditionExpression="#s = :pending",
                ExpressionAttributeNames={"#s": "status", "#t": "todo"},
                ExpressionAttributeValues={
                    ":manifested": S(MANIFESTED),
                    ":pending": S(PENDING),
                    ":m": S(manifest_id),
                    ":now": S(iso()),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            current: Item = exc.response.get("Item", {})  # type: ignore[assignment]
            return bool(current.get("manifest_id", {}).get("S") == manifest_id)
        return True

    async def add_candidates(self, record: ManifestRecord, owner: str, refs: list[FileRef]) -> bool:
        """Append `refs` to the record's candidates, once: a retried append (its reply lost) finds its first
        file already among `candidate_keys` and is recognised as done, instead of listing the files twice."""
        keys = [f.file_key for f in refs]

        def appended(item: Mapping[str, Any]) -> bool:
            held = set((item.get("candidate_keys") or {}).get("SS", []))
            return owned("owner", owner, state=CLAIMING)(item) and set(keys) <= held

        return await written(
            self._ddb.update_item,
            mine=appended,
            TableName=self.table,
            Key=self.key(record.date_prefix, manifest_item_key(record.manifest_id)),
            UpdateExpression="SET candidates = list_append(candidates, :c) ADD candidate_keys :k",
            ConditionExpression="#st = :claiming AND #o = :o AND NOT contains(candidate_keys, :first)",
            ExpressionAttributeNames={"#st": "state", "#o": "owner"},
            ExpressionAttributeValues={
                ":c": {"L": [f.to_attr() for f in refs]},
                ":k": {"SS": keys},
                ":first": S(keys[0]),
                ":claiming": S(CLAIMING),
                ":o": S(owner),
            },
        )

    async def seal(self, record: ManifestRecord, owner: str, files: list[FileRef]) -> bool:
        """CLAIMING → SEALED with the files claimed (EMPTY, out of the todo index, if none were).
        False if the record is no longer ours to seal."""
        values: Item = {
            ":claiming": S(CLAIMING),
            ":o": S(owner),
            ":files": {"L": [f.to_attr() for f in files]},
            ":n": N(len(files)),
            ":now": S(iso()),
        }
        update = "SET #f = :files, file_count = :n, sealed_at = :now, #st = :state REMOVE candidates, candidate_keys"
        if files:
            values[":state"] = S(SEALED)
        else:
            values[":state"] = S(EMPTY)
            update += ", #t, todo_order"
        return await written(
            self._ddb.update_item,
            mine=owned("owner", owner, state=values[":state"]["S"]),
            TableName=self.table,
            Key=self.key(record.date_prefix, manifest_item_key(record.manifest_id)),
            UpdateExpression=update,
            ConditionExpression="#st = :claiming AND #o = :o",
            ExpressionAttributeNames={
                "#f": "files",
                "#st": "state",
                "#o": "owner",
                **({} if files else {"#t": "todo"}),
            },
            ExpressionAttributeValues=values,
        )

    async def take_over(self, seen: OpenManifest, owner: str, lease_until: float) -> ManifestRecord | None:
        """Become the owner of an abandoned manifest; None if someone else moved it first."""
        try:
            resp = await self._ddb.update_item(
                TableName=self.table,
                Key=self.key(seen.date_prefix, manifest_item_key(seen.manifest_id)),
                UpdateExpression="SET #o = :o, todo_order = :lease, recovered_at = :now",
                ConditionExpression="todo_order = :seen AND #st IN (:claiming, :sealed)",
                ExpressionAttributeNames={"#st": "state", "#o": "owner"},
                ExpressionAttributeValues={
                    ":sealed": S(SEALED),
                    ":claiming": S(CLAIMING),
                    ":o": S(owner),
                    ":lease": S(iso_at(lease_until)),
                    ":seen": S(seen.lease),
                    ":now": S(iso()),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return None
            raise
        record = ManifestRecord.from_item(resp["Attributes"])
        record.recovered = True
        return record

    async def mark_submitted(self, record: ManifestRecord, owner: str) -> bool:
        """SEALED → SUBMITTED, leaving the todo index. False if another owner took it over, or the
        compact worker already finished it (both fine: the job is out)."""
        return await written(
            self._ddb.update_item,
            mine=owned("owner", owner, state=SUBMITTED),
            TableName=self.table,
            Key=self.key(record.date_prefix, manifest_item_key(record.manifest_id)),
            UpdateExpression="SET #st = :submitted, submitted_at = :now REMOVE #t, todo_order",
            ConditionExpression="#st = :sealed AND #o = :o",
            ExpressionAttributeNames={"#st": "state", "#o": "owner", "#t": "todo"},
            ExpressionAttributeValues={
                ":submitted": S(SUBMITTED),
                ":sealed": S(SEALED),
                ":o": S(owner),
                ":now": S(iso()),
            },
        )

    # --- batches (for items whose owner is settled) ----------------------------------------------

    async def get_many(self, keys: list[Item]) -> list[Item]:
        """BatchGetItem, 100 keys a call, consistent, unprocessed keys retried."""
        out: list[Item] = []
        for start in range(0, len(keys), 100):
            request: Any = {self.table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            for attempt in range(8):
                resp = await self._ddb.batch_get_item(RequestItems=request)
                out += resp.get("Responses", {}).get(self.table, [])
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                await jitter(attempt)
            else:
                raise Transient("BatchGetItem left keys unprocessed", code="UNPROCESSED")
        return out

    async def put_many(self, items: list[Item]) -> None:
        """BatchWriteItem, 25 puts a call, unprocessed items retried. Unconditional: only for items
        no one else may change any more."""
        for start in range(0, len(items), 25):
            request: Any = {self.table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]}
            for attempt in range(8):
                resp = await self._ddb.batch_write_item(RequestItems=request)
                request = resp.get("UnprocessedItems") or {}
                if not request:
                    break
                await jitter(attempt)
            else:
                raise Transient("BatchWriteItem left items unprocessed", code="UNPROCESSED")


async def jitter(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
