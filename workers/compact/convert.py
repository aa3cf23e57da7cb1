"""NDJSON → one Parquet file, in bounded memory. Everything here is synchronous and CPU-bound: the stage
runs it in worker threads (asyncio.to_thread) so the event loop keeps heart-beating.

Two passes over local disk, one over S3:
  1. each source file streams through a `FileSpool`: lines are split, parsed and checked; a good line
     is appended raw to the file's spool, a bad one to its quarantine spool, and the kinds of values
     seen per field are tallied;
  2. once every file is read, the tallies give one schema; the spools are parsed again batch by batch
     and written with that schema by a single `ParquetWriter`.
Memory holds one chunk or one batch at a time, whatever the size of the files.

Schema rules (documented in the README):
  - columns are the union of the top-level fields, in order of first appearance (manifest order, then
    line order), followed by the lineage columns `_fleet_file` (source key) and `_fleet_line`;
  - a field whose values are only booleans → bool; only integers (int64 range) → int64; integers and
    floats → float64; only strings → string;
  - nested objects and arrays are kept as JSON strings (not structs: files disagree on nested shapes,
    and a string column never forces a row out);
  - any other mix (e.g. strings and numbers) → string, non-string values written as their JSON text;
  - a field that is null or absent in a row is null.
A line that is not a JSON object (bad JSON, an array, a number, invalid UTF-8, too long, or using a
lineage column's name) is quarantined with its file, line number and reason. Blank lines are counted,
not quarantined: they hold no record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

LINEAGE_FILE = "_fleet_file"
LINEAGE_LINE = "_fleet_line"
RESERVED = frozenset({LINEAGE_FILE, LINEAGE_LINE})

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# value kinds
NULL, BOOL, INT, FLOAT, STR, NESTED, BIG = "null", "bool", "int", "float", "str", "nested", "big"


class SchemaTooWide(Exception):
    pass


def kind_of(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT if INT64_MIN <= value <= INT64_MAX else BIG
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    return NESTED


def arrow_type(kinds: set[str]) -> pa.DataType:
    seen = kinds - {NULL}
    if seen == {BOOL}:
        return pa.bool_()
    if seen == {INT}:
        return pa.int64()
    if seen and seen <= {INT, FLOAT}:
        return pa.float64()
    return pa.string()


def as_json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class FileSpool:
    """One source file's pass-1 state. `feed` is called with consecutive chunks of its bytes, from one
    thread at a time; `close` ends the last line."""

    source: str  # "s3://bucket/key", as quarantine entries name it
    key: str
    directory: Path
    index: int
    max_line_bytes: int
    max_columns: int
    excerpt_bytes: int = 4096
    rows: int = 0
    blank_lines: int = 0
    quarantined: int = 0
    missing: str | None = None
    kinds: dict[str, set[str]] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=bytearray)
    _line_no: int = 0
    _oversized: bool = False
    _rows_fh: IO[bytes] | None = None
    _bad_fh: IO[bytes] | None = None

    @property
    def rows_path(self) -> Path:
        return self.directory / f"{self.index:05d}.rows"

    @property
    def bad_path(self) -> Path:
        return self.directory / f"{self.index:05d}.bad"

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._append(chunk[start:])
                return
            self._append(chunk[start:newline])
            self._end_line()
            start = newline + 1

    def close(self) -> None:
        if self._buffer or self._oversized:
            self._end_line()
        for fh in (self._rows_fh, self._bad_fh):
            if fh is not None:
                fh.close()
        self._rows_fh = self._bad_fh = None

    def mark_missing(self, reason: str) -> None:
        self.missing = reason
        self._quarantine(0, reason, b"")
        self.close()

    def _append(self, piece: bytes) -> None:
        if self._oversized:
            return  # the rest of a line already quarantined as too long
        self._buffer += piece
        if len(self._buffer) > self.max_line_bytes:
            self._oversized = True

    def _end_line(self) -> None:
        self._line_no += 1
        raw = bytes(self._buffer).rstrip(b"\r")
        self._buffer.clear()
        if self._oversized:
            self._oversized = False
            self._quarantine(self._line_no, f"line longer than {self.max_line_bytes} bytes", raw)
            return
        if not raw.strip():
            self.blank_lines += 1
            return
        reason = self._check(raw)
        if reason:
            self._quarantine(self._line_no, reason, raw)
            return
        if self._rows_fh is None:
            self._rows_fh = self.rows_path.open("ab")
        self._rows_fh.write(b"%d\t%s\n" % (self._line_no, raw))
        self.rows += 1

    def _check(self, raw: bytes) -> str | None:
        """None for a good record (its kinds tallied), else why the line is quarantined."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "not valid UTF-8"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON: {exc.msg} at column {exc.colno}"
        except RecursionError:
            return "JSON nested too deeply"
        if not isinstance(value, dict):
            return f"JSON {type(value).__name__ if value is not None else 'null'} is not an object"
        if RESERVED.intersection(value):
            return f"uses a reserved field name ({', '.join(sorted(RESERVED.intersection(value)))})"
        new = [k for k in value if k not in self.kinds]
        if len(self.kinds) + len(new) > self.max_columns:
            return f"more than {self.max_columns} distinct fields in this file"
        for k, v in value.items():
            self.kinds.setdefault(k, set()).add(kind_of(v))
        return None

    def _quarantine(self, line: int, reason: str, raw: bytes) -> None:
        self.quarantined += 1
        if self._bad_fh is None:
            self._bad_fh = self.bad_path.open("ab")
        excerpt = raw[: self.excerpt_bytes].decode("utf-8", "replace")
        entry: dict[str, Any] = {"file": self.source, "line": line, "reason": reason, "raw": excerpt}
        if len(raw) > self.excerpt_bytes:
            entry["raw_truncated"] = True
        self._bad_fh.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.rows or not self.rows_path.exists():
            return
        with self.rows_path.open("rb") as fh:
            for line in fh:
                number, _, raw = line.partition(b"\t")
                yield int(number), json.loads(raw)


def unified_schema(spools: list[FileSpool], max_columns: int, manifest_id: str) -> pa.Schema:
    kinds: dict[str, set[str]] = {}
    for spool in spools:
        for name, seen in spool.kinds.items():
            kinds.setdefault(name, set()).update(seen)
    if len(kinds) > max_columns:
        raise SchemaTooWide(f"{len(kinds)} distinct fields across the manifest (max {max_columns})")
    fields = [pa.field(name, arrow_type(seen)) for name, seen in kinds.items()]
    fields += [pa.field(LINEAGE_FILE, pa.string(), nullable=False), pa.field(LINEAGE_LINE, pa.int64(), nullable=False)]
    return pa.schema(
        fields,
        metadata={"fleet.manifest_id": manifest_id, "fleet.nested": "json-string"},
    )


@dataclass(frozen=True)
class ParquetResult:
    rows: int
    columns: int
    bytes: int


def write_parquet(spools: list[FileSpool], schema: pa.Schema, path: Path, *, batch_rows: int) -> ParquetResult:
    """Pass 2: the spools, in manifest order, through one writer with the unified schema."""
    data_fields = [f for f in schema if f.name not in RESERVED]
    rows = 0
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for spool in spools:
            batch: list[tuple[int, dict[str, Any]]] = []
            for record in spool.records():
                batch.append(record)
                if len(batch) >= batch_rows:
                    writer.write_batch(_to_batch(batch, spool.key, data_fields, schema))
                    rows += len(batch)
                    batch = []
            if batch:
                writer.write_batch(_to_batch(batch, spool.key, data_fields, schema))
                rows += len(batch)
    return ParquetResult(rows=rows, columns=len(data_fields), bytes=path.stat().st_size)


def _to_batch(
    batch: list[tuple[int, dict[str, Any]]], key: str, data_fields: list[pa.Field], schema: pa.Schema
) -> pa.RecordBatch:
    arrays = []
    for f in data_fields:
        values = [row.get(f.name) for _, row in batch]
        if pa.types.is_string(f.type):
            values = [as_json_text(v) for v in values]
        elif pa.types.is_float64(f.type):
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=f.type))
    arrays.append(pa.array([key] * len(batch), type=pa.string()))
    arrays.append(pa.array([n for n, _ in batch], type=pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def concat_quarantine(spools: list[FileSpool], path: Path) -> int:
    """The manifest's quarantine file: every spool's bad lines, in manifest order."""
    count = 0
    with path.open("wb") as out:
        for spool in spools:
            if spool.quarantined and spool.bad_path.exists():
                with spool.bad_path.open("rb") as fh:
                    for line in fh:
                        out.write(line)
                        count += 1
    return count
