"""`fleet status`: a job as a user reads it, and following it live until it ends.

A job made of jobs (`children`: child job id → how many of the parent's `units` it holds; an upload whose
files went into several manifests) takes its status from its children: it is done when every unit is in
a child and every child is done.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from shared.jobs import JobStore

# A job in one of these is over: `fleet status --follow` stops, `fleet submit --wait` returns.
SUCCESS = frozenset({"COMPLETED", "SUCCEEDED"})
FINAL = SUCCESS | {"PARTIAL_SUCCESS", "FAILED"}


class JobNotFound(LookupError):
    pass


async def resolve(jobs: JobStore, given: str) -> str:
    """A job id from what the user typed: the id, or a unique prefix of one (the 8-character ids that
    `fleet demo` and `fleet dlq` print)."""
    given = given.strip()
    if not given:
        raise JobNotFound("give a job id (or the first characters of one)")
    if await jobs.get(given) is not None:
        return given
    found = await jobs.find(given, limit=2)
    if not found:
        raise JobNotFound(f"no job {given!r}")
    if len(found) > 1:
        raise JobNotFound(f"more than one job starts with {given!r}: give more characters")
    return found[0]


async def load(jobs: JobStore, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job, with its status derived from its children's if it has any, and the children."""
    job = await jobs.get(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    children = job.get("children")
    if not isinstance(children, dict):
        return job, []
    kids = []
    for child_id, units in sorted(children.items()):
        child = await jobs.get(str(child_id)) or {"execution_id": child_id, "status": "UNKNOWN"}
        kids.append({**child, "units": int(units)})
    job = {**job, "status": derived_status(job, kids)}
    return job, kids


def derived_status(job: dict[str, Any], children: list[dict[str, Any]]) -> str:
    expected = int(job.get("units", 0) or 0)
    placed = sum(c["units"] for c in children)
    statuses = [str(c.get("status", "")) for c in children]
    if not children or placed < expected or not all(s in FINAL for s in statuses):
        waiting = expected - placed
        if not children:
            return str(job.get("status", "SUBMITTED"))
        return f"RUNNING ({placed}/{expected} units placed)" if waiting > 0 else "RUNNING"
    if all(s in SUCCESS for s in statuses):
        return "COMPLETED"
    if all(s == "FAILED" for s in statuses):
        return "FAILED"
    return "PARTIAL_SUCCESS"


def view(job: dict[str, Any], children: list[dict[str, Any]]) -> Group:
    history = job.get("history", [])
    latest = f"  latest={history[-1]['stage']}:{history[-1]['status']}" if history else ""
    head = f"[bold]job {job['execution_id']}[/]  kind={job.get('kind', '-')}  status={job.get('status', '-')}{latest}"
    table = Table("at", "stage", "status", "detail")
    for entry in history:
        detail = {k: v for k, v in entry.items() if k not in ("at", "stage", "status")}
        table.add_row(
            str(entry.get("at", "")),
            str(entry.get("stage", "")),
            str(entry.get("status", "")),
            ", ".join(f"{k}={v}" for k, v in detail.items()),
        )
    parts: list[Any] = [head, table]
    if children:
        kids = Table("part of it", "kind", "holds", "status")
        for child in children:
            kids.add_row(
                str(child["execution_id"]), str(child.get("kind", "-")), str(child["units"]), str(child.get("status"))
            )
        parts.append(kids)
    return Group(*parts)


async def follow(jobs: JobStore, job_id: str, console: Console, *, interval: float = 1.0, limit: float = 3600) -> int:
    """Show the job live until it is over (exit 0 on success, 1 otherwise), or `limit` seconds pass (2)."""
    deadline = time.monotonic() + limit
    job, children = await load(jobs, job_id)
    if console.is_terminal:
        with Live(view(job, children), console=console, refresh_per_second=4) as live:
            while str(job.get("status")) not in FINAL and time.monotonic() < deadline:
                await asyncio.sleep(interval)
                job, children = await load(jobs, job_id)
                live.update(view(job, children))
    else:
        # Piped: one line per new history entry, then the final view.
        shown = 0
        while True:
            history = job.get("history", [])
            for entry in history[shown:]:
                console.print(f"{entry.get('at', '')}  {entry.get('stage', '')}  {entry.get('status', '')}")
            shown = len(history)
            if str(job.get("status")) in FINAL or time.monotonic() >= deadline:
                break
            await asyncio.sleep(interval)
            job, children = await load(jobs, job_id)
        console.print(view(job, children))
    status = str(job.get("status"))
    if status not in FINAL:
        console.print(f"job {job_id} is still {status} after {limit:g}s")
        return 2
    return 0 if status in SUCCESS else 1
