"""echo: a job is echoed and tracked; the runtime's own calls (receive, delete, heartbeat, DLQ, job
tracking, metrics) are what it needs."""

from __future__ import annotations

from shared.app import send_job
from tests.iam.harness import Run
from tests.iam.scenarios import scenario
from workers.echo import ECHO


@scenario("echo")
async def echo(run: Run) -> None:
    # Given a tracked job on the echo queue
    job_id = await send_job(run.admin, ECHO, {"text": f"hello {run.ident}"}, kind="echo")
    # When echo drains its queue
    result = await run.burst()
    # Then the job was echoed once (after the harness's release of its first delivery) and tracked
    assert result.stats.succeeded == 1 and result.dead_letters == []
    job = await run.admin.jobs.get(job_id)
    assert job is not None
    assert job["progress"]["echo"]["status"] == "SUCCEEDED"
    statuses = [h["status"] for h in job["history"] if h["stage"] == "echo"]
    assert statuses[-2:] == ["ECHOED", "SUCCEEDED"] and statuses.count("ECHOED") == 1
