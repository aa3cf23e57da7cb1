"""The ingest → compact pipeline's resources: files land in `fleet-landing`, are tracked in `fleet-files`,
and become manifests and Parquet in `fleet-lake`."""

from __future__ import annotations

from shared.resources import Bucket, Index, Notify, Queue, Table

INGEST = Queue("ingest", "fleet-ingest")
COMPACT = Queue("compact", "fleet-compact")
# Uploads under incoming/ notify the ingest queue (`fleet bootstrap` wires it).
LANDING = Bucket("landing", "fleet-landing", notify=(Notify(INGEST, prefix="incoming/"),))
LAKE = Bucket("lake", "fleet-lake")
# Files, manifests and per-date slots; the sparse "todo" index lists only work still owed
# (pending files by date and age, open manifests by lease expiry) — workers/ingest/store.py.
FILES = Table(
    "files",
    "fleet-files",
    hash_key="date_prefix",
    range_key="file_key",
    indexes=(Index("todo", "todo", "todo_order"),),
)
