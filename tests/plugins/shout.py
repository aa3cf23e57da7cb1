"""`shout`: a worker that lives in tests/, not in workers/: one declaration, found through FLEET_PLUGINS.

It upper-cases its message's text into the job's history, so a test can see that it really ran.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.declaration import WorkerSpec
from shared.resources import Queue
from shared.stage import Context, Services, parse_body

SHOUT = Queue("shout", "fleet-shout")

WORKER = WorkerSpec(
    name="shout",
    summary="upper-cases text (a test's plugin worker)",
    stage="tests.plugins.shout:ShoutStage",
    queue=SHOUT,
    tuning={"concurrency": 2, "visibility_timeout": 45},
    submit="tests.plugins.shout:register",
)


class Shout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=100)


class ShoutStage:
    name = "shout"

    def __init__(self, services: Services) -> None:
        self.services = services

    def parse(self, body: str) -> Shout:
        return parse_body(Shout, body)

    async def handle(self, message: Shout, ctx: Context) -> None:
        if ctx.job_id:
            await ctx.services.jobs.record_stage(
                ctx.job_id, "shout", "SHOUTED", queue=ctx.queue, text=message.text.upper()
            )


def register(kinds: object) -> None:
    from typing import Any

    from shared.app import send_job

    async def submit(args: Any, services: Services) -> str:
        return await send_job(services, SHOUT, {"text": args.text}, kind="shout", terminal="shout")

    p = kinds.add_parser("shout", help="a message for the shout worker")  # type: ignore[attr-defined]
    p.add_argument("text")
    p.set_defaults(submit=submit)
