"""`clips`: "Begin Clip Generation" (seed 002) → one job per clip → each clip cut from its source in S3 by
range reads and stitched in one ffmpeg pass → `fleet-media/<episodeId>/clips/<clipId>/clip.mp4`, with the
clip's status history in `fleet-clips`. See README.md in this folder."""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from workers.clips.resources import BEGIN_RULE, CLIPS, CLIPS_TABLE, MEDIA

WORKER = WorkerSpec(
    name="clips",
    summary="Begin Clip Generation → one job per clip → ffmpeg cut + stitch from S3 byte ranges",
    stage="workers.clips.stage:ClipsStage",
    queue=CLIPS,
    uses=(
        # The trigger fans clips out onto its own queue (the runtime already resolves its URL).
        uses(CLIPS, "sqs:SendMessage"),
        uses(BEGIN_RULE),  # delivers the events; the worker calls nothing on it
        uses(CLIPS_TABLE, "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"),
        # HeadObject and presigned GETs need s3:GetObject; multipart uploads need only s3:PutObject
        # (CreateMultipartUpload, UploadPart, CompleteMultipartUpload) plus s3:AbortMultipartUpload.
        uses(MEDIA, "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"),
    ),
    # Renders are CPU-bound: a few at a time per task; scale out with tasks, not slots. The message is
    # kept hidden by the runtime's heartbeat while ffmpeg makes progress (a stalled ffmpeg is killed).
    tuning={"concurrency": 2, "visibility_timeout": 120, "handler_timeout": 3600},
    submit="workers.clips.submit:register",
    demo="workers.clips.demo:demo",
    demo_order=50,
)
