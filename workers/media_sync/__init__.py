"""`media-sync`: a cloud camera library into S3 (seeds/001, re-platformed from three Lambdas).

- `sync` (`fleet-sync`): OAuth token from Secrets Manager (refreshed once, written back), the library
  listed page by page, one `fleet-download` job per item not COMPLETED in `fleet-sync`;
- `download` (`fleet-download`): provider bytes streamed into an S3 multipart upload with memory bounded
  by part size × parts in flight, a SHA-256 of the stream and a CRC32C per part, resumed from the parts
  already uploaded after a crash.

`fleet worker media-sync` runs both. See workers/media_sync/README.md.
"""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from shared.idempotency import USES_LEASES
from shared.resources import CLOUDWATCH, JOBS
from workers.finalizer.resources import MEDIA, NOTIFICATIONS
from workers.media_sync.resources import DOWNLOAD_QUEUE, PROVIDER_SECRET, SYNC_QUEUE, SYNC_TABLE

# Both stages authenticate: read the credentials, write refreshed tokens back (once, under a lease in
# fleet-leases), and alert on SNS when a refresh fails.
_AUTH = (
    uses(PROVIDER_SECRET, "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"),
    USES_LEASES,
    uses(NOTIFICATIONS, "sns:Publish", "sns:ListTopics"),
)

SYNC = WorkerSpec(
    name="sync",
    summary="OAuth token, the provider's library page by page, one download job per item not yet synced",
    stage="workers.media_sync.sync_stage:SyncStage",
    queue=SYNC_QUEUE,
    uses=(
        *_AUTH,
        uses(SYNC_TABLE, "dynamodb:BatchGetItem"),
        uses(DOWNLOAD_QUEUE, "sqs:GetQueueUrl", "sqs:SendMessage"),
        uses(JOBS, "dynamodb:UpdateItem"),
    ),
    tuning={"concurrency": 1, "visibility_timeout": 300},
    submit="workers.media_sync.submit:register",
    demo="workers.media_sync.demo:demo",
    demo_order=40,
    cli="workers.media_sync.provider.command:register",
    group="media-sync",
)

DOWNLOAD = WorkerSpec(
    name="download",
    summary="provider bytes -> S3 multipart, bounded memory, SHA-256 + CRC32C per part, resumable",
    stage="workers.media_sync.download_stage:DownloadStage",
    queue=DOWNLOAD_QUEUE,
    uses=(
        *_AUTH,
        uses(SYNC_TABLE, "dynamodb:GetItem", "dynamodb:UpdateItem"),
        uses(
            MEDIA,
            "s3:GetObject",  # HeadObject, and the read-back digest after a resumed transfer
            "s3:PutObject",  # PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
            "s3:PutObjectTagging",
            "s3:GetObjectTagging",
        ),
        uses(CLOUDWATCH, "cloudwatch:PutMetricData"),
    ),
    # Long transfers: the runtime's heartbeat keeps the message invisible; the handler may run for hours.
    tuning={"concurrency": 4, "visibility_timeout": 120, "handler_timeout": 6 * 3600},
    group="media-sync",
)
