"""`fleet entity ID`: an entity's rolling windows, daily buckets and alerts, as stored in `fleet-metrics`."""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.app import open_services
from shared.logs import configure_logging
from shared.settings import load_settings
from workers.aggregate.resources import METRICS
from workers.aggregate.store import ALERTED, OUTBOX, MetricsTable

FIGURES = (
    "sessions_7d",
    "sessions_14d",
    "sessions_30d",
    "ib_calls_7d",
    "ib_calls_14d",
    "avg_rating",
    "ratings_30d",
    "health_score",
    "window_end",
    "events",
    "last_updated",
)
SNAPSHOT = (
    "reported_sessions_7d",
    "reported_sessions_30d",
    "reported_ib_calls_14d",
    "health_as_of",
    "region",
    "available_tutors",
    "active_students",
    "demand_score",
    "supply_score",
    "balance_status",
    "supply_as_of",
)
_DAY = re.compile(r"^([sirn])_(\d{4})(\d{2})(\d{2})$")


def render(items: list[dict[str, Any]], console: Console) -> None:
    for item in sorted(items, key=lambda i: str(i["entity_type"])):
        console.print(f"[bold]{item['entity_type']} {item['entity_id']}[/]")
        figures = Table("figure", "value")
        for name in (*FIGURES, *SNAPSHOT):
            if name in item:
                figures.add_row(name, str(item[name]))
        console.print(figures)
        days: dict[str, dict[str, Any]] = {}
        for name, value in item.items():
            m = _DAY.match(name)
            if m:
                days.setdefault(f"{m.group(2)}-{m.group(3)}-{m.group(4)}", {})[m.group(1)] = value
        if days:
            buckets = Table("day", "sessions", "IB calls", "ratings", "rating sum")
            for day in sorted(days, reverse=True):
                v = days[day]
                buckets.add_row(day, str(v.get("s", 0)), str(v.get("i", 0)), str(v.get("n", 0)), str(v.get("r", 0)))
            console.print(buckets)
        alerts = Table("alert", "last fired", "unsent")
        for name, value in sorted(item.items()):
            if name.startswith(ALERTED):
                rule = name[len(ALERTED) :]
                fired = datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
                alerts.add_row(rule, fired, "yes" if OUTBOX + rule in item else "")
        if alerts.row_count:
            console.print(alerts)


def cmd_entity(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    console = Console(highlight=False)

    async def show() -> int:
        async with open_services(settings) as services:
            table = MetricsTable(services.aws.dynamodb, settings.name_of(METRICS))
            items = await table.items_of(args.entity_id)
        if args.type:
            items = [i for i in items if i.get("entity_type") == args.type]
        if not items:
            console.print(f"no metrics for {args.entity_id}")
            return 1
        render(items, console)
        return 0

    return asyncio.run(show())


def register(commands: Any) -> None:
    p = commands.add_parser("entity", help="an entity's 7/14/30-day windows, daily buckets and alerts")
    p.add_argument("entity_id", help="a student, tutor or subject id")
    p.add_argument("--type", choices=["student", "tutor", "subject"], help="only this entity type")
    p.set_defaults(func=cmd_entity)
