"""`finalizer`: closes a job. It reads the final event every pipeline sends to `fleet-finalize`
(seeds/000 §3), decides the job's final status, records it in `fleet-jobs` (with its own retry policy),
notifies `fleet-notifications` over SNS and records five CloudWatch metrics — once per job and outcome,
however often SQS delivers the event. See README.md for the rules."""

from __future__ import annotations

from shared.declaration import WorkerSpec, uses
from shared.idempotency import USES_LEASES
from shared.resources import CLOUDWATCH, JOBS
from workers.finalizer.resources import FINALIZE, MEDIA, NOTIFICATIONS

WORKER = WorkerSpec(
    name="finalizer",
    summary="a job's final status, tracking with retry, SNS notification, the five CloudWatch metrics, cost",
    stage="workers.finalizer.stage:FinalizerStage",
    queue=FINALIZE,
    uses=(
        uses(JOBS, "dynamodb:UpdateItem"),
        uses(NOTIFICATIONS, "sns:Publish", "sns:ListTopics"),
        uses(MEDIA, "s3:GetObject"),
        USES_LEASES,
        uses(CLOUDWATCH, "cloudwatch:PutMetricData"),
    ),
    submit="workers.finalizer.submit:register",
    demo="workers.finalizer.demo:demo",
    demo_order=90,
)
