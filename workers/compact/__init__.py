"""`compact`: a manifest's NDJSON files → one Parquet file in fleet-lake, bad lines quarantined."""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from shared.idempotency import USES_LEASES
from shared.resources import JOBS
from workers.finalizer.resources import FINALIZE
from workers.ingest.resources import COMPACT, FILES, LAKE, LANDING

WORKER = WorkerSpec(
    name="compact",
    summary="a manifest's NDJSON files → one Parquet file (replaces the Glue job); bad lines quarantined",
    stage="workers.compact.stage:CompactStage",
    queue=COMPACT,
    uses=(
        uses(LANDING, "s3:GetObject"),
        uses(LAKE, "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"),
        uses(FILES, "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"),
        USES_LEASES,
        uses(FINALIZE, "sqs:GetQueueUrl", "sqs:SendMessage"),
        uses(JOBS, "dynamodb:GetItem"),  # it finalizes only its manifest's own job: it reads that job first
    ),
)
