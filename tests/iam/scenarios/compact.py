"""compact: a manifest's NDJSON files become one Parquet file, and the job's final event is handed to
the finalizer once, however often the compact job is delivered."""

from __future__ import annotations

import json

from tests.helpers import drain_queue, fast_tuning, queue_urls, run_burst
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from tests.iam.scenarios.ingest import DATE, given_uploads, quick_ingest
from workers.finalizer.resources import FINALIZE
from workers.ingest.resources import COMPACT, INGEST, LAKE


@scenario(
    "compact",
    needs=("ingest",),
    unused={
        "s3:AbortMultipartUpload": "only when a multipart upload of a Parquet file over 64 MiB fails",
        "dynamodb:DeleteItem": "only when sending the final event fails (the lease is released for a retry)",
    },
)
async def compact(run: Run) -> None:
    # Given a manifest made by ingest (with full rights), and its compact job delivered twice
    await given_uploads(run)
    await run_burst(quick_ingest(run.admin), run.admin, fast_tuning(burst_idle_seconds=0.5), queue=INGEST)
    url, _ = await queue_urls(run.admin, COMPACT)
    (job,) = await drain_queue(run.admin, url, wait=0)
    for _ in range(2):
        await run.admin.aws.sqs.send_message(
            QueueUrl=url, MessageBody=job["Body"], MessageAttributes=job["MessageAttributes"]
        )
    # When compact drains its queue, one job at a time
    result = await run.burst(concurrency=1)
    # Then one Parquet file is in the lake and one final event reached the finalizer
    assert result.stats.succeeded == 2 and result.dead_letters == []
    lake = run.settings.name_of(LAKE)
    listed = await run.admin.aws.s3.list_objects_v2(Bucket=lake, Prefix=f"parquet/date={DATE}/")
    assert len(listed["Contents"]) == 1
    finals, _ = await queue_urls(run.admin, FINALIZE)
    events = [json.loads(m["Body"]) for m in await drain_queue(run.admin, finals, wait=0)]
    assert len(events) == 1 and events[0]["status"] == "COMPLETED"
