"""`echo`: the smallest real stage, to see the runtime work end to end."""

from __future__ import annotations

from shared.declaration import WorkerSpec
from shared.resources import Queue

ECHO = Queue("echo", "fleet-echo")

WORKER = WorkerSpec(
    name="echo",
    summary="the smallest real stage: exercises the runtime end to end",
    stage="workers.echo.stage:EchoStage",
    queue=ECHO,
    submit="workers.echo.submit:register",
    demo="workers.echo.demo:demo",
    demo_order=10,
)
