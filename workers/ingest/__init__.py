"""`ingest`: S3 notifications → tracked files → manifests of up to 200 files, handed to `compact`."""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from shared.resources import JOBS
from workers.ingest.resources import COMPACT, FILES, INGEST, LAKE, LANDING

WORKER = WorkerSpec(
    name="ingest",
    summary="S3 notifications → each file tracked once → manifests of 200, claimed without locks",
    stage="workers.ingest.stage:IngestStage",
    queue=INGEST,
    uses=(
        uses(LANDING),  # read by compact; ingest only receives its notifications
        uses(
            FILES,
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
        ),
        uses(LAKE, "s3:PutObject"),
        uses(COMPACT, "sqs:GetQueueUrl", "sqs:SendMessage"),
        uses(JOBS, "dynamodb:PutItem"),
    ),
    submit="workers.ingest.submit:register",
    demo="workers.ingest.demo:demo",
    demo_order=20,
)
