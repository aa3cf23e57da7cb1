"""`echo`: the smallest real stage. It counts the message's text, optionally sleeps or fails on request, and
records what it saw on the message's job — enough to exercise the runtime end to end."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Fatal, Retry
from shared.stage import Context, Services, parse_body

log = logging.getLogger("fleet.echo")


class EchoMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=4096)
    sleep: float = Field(0, ge=0, le=3600, description="seconds to work for")
    fail: Literal["retry", "fatal"] | None = Field(None, description="fail on purpose, to see the runtime react")


class EchoStage:
    name = "echo"
    queue = "echo"

    def __init__(self, services: Services) -> None:
        self.services = services

    def parse(self, body: str) -> EchoMessage:
        return parse_body(EchoMessage, body)

    async def handle(self, message: EchoMessage, ctx: Context) -> None:
        if message.sleep:
            await asyncio.sleep(message.sleep)
        if message.fail == "retry":
            raise Retry("asked to fail (retry)")
        if message.fail == "fatal":
            raise Fatal("asked to fail (fatal)", code="ECHO_FATAL")
        # The text is the producer's: count it, never log or store it (it may carry anything).
        log.info("echo", extra={"chars": len(message.text)})
        if ctx.job_id:
            await ctx.services.jobs.record_stage(ctx.job_id, "echo", "ECHOED", queue=ctx.queue, chars=len(message.text))
