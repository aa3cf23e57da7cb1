"""ingest: files uploaded to the landing bucket are tracked and handed to compact as one manifest."""

from __future__ import annotations

import json

from shared.stage import Services
from tests.helpers import drain_queue, queue_urls
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from workers.ingest.config import IngestConfig
from workers.ingest.resources import COMPACT, LAKE
from workers.ingest.stage import IngestStage
from workers.ingest.submit import upload_files

DATE = "2024-05-06"


async def given_uploads(run: Run, count: int = 3) -> str:
    """`count` NDJSON files uploaded as one job (their notifications reach the ingest queue)."""
    paths = []
    for n in range(count):
        path = run.tmp / f"{run.ident}-{n}.ndjson"
        path.write_text(json.dumps({"n": n, "run": run.ident}) + "\n")
        paths.append(path)
    job_id, _ = await upload_files(run.admin, paths, DATE)
    return job_id


def quick_ingest(services: Services) -> IngestStage:
    """Ingest that hands a manifest off 0.2 s after its last file instead of waiting for 200."""
    return IngestStage(services, IngestConfig(max_wait_seconds=0.2, tick_seconds=0.1))


@scenario("ingest")
async def ingest(run: Run) -> None:
    # Given three files uploaded as one job
    await given_uploads(run)
    # When ingest drains its notifications
    result = await run.burst(quick_ingest(run.worker))
    # Then one manifest of the three files is in the lake and its compact job is queued
    assert result.dead_letters == []
    lake = run.settings.name_of(LAKE)
    listed = await run.admin.aws.s3.list_objects_v2(Bucket=lake, Prefix=f"manifests/{DATE}/")
    (manifest,) = listed["Contents"]
    body = json.loads(await (await run.admin.aws.s3.get_object(Bucket=lake, Key=manifest["Key"]))["Body"].read())
    assert len(body["files"]) == 3
    url, _ = await queue_urls(run.admin, COMPACT)
    (job,) = [json.loads(m["Body"]) for m in await drain_queue(run.admin, url, wait=0)]
    assert job["manifest_key"] == manifest["Key"]
