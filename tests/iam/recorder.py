"""Record every AWS call a worker makes, in IAM terms, through botocore's event hooks.

`provide-client-params` fires for every API call and for every presigned URL (whose holder acts with
the worker's identity), before any retry; `after-call` sees each response, so an AccessDenied is noticed
at once even where the runtime tolerates the failure (job tracking, metrics, heartbeats).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

from shared.clients import ALL_SERVICES, AwsClients
from tests.iam.actions import Permission, permissions_of

CONTEXT_KEY = "fleet_iam_permissions"
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "403", "Forbidden"}


class Recorder:
    def __init__(self) -> None:
        self.used: Counter[Permission] = Counter()
        self.denied: list[Permission] = []
        self.denied_event = asyncio.Event()
        # (wall, process CPU) seconds each handler took: bench/sizing.py reads them
        self.durations: list[tuple[float, float]] = []
        self._completed: dict[str, asyncio.Event] = {}

    def attach(self, aws: AwsClients) -> None:
        """Hook every client an open `AwsClients` hands out: each of its client properties (`sqs`, ...,
        and the no-retry `dynamodb_once`, `sns_once`, whatever is added next)."""
        clients = []
        for name, attr in vars(AwsClients).items():
            if isinstance(attr, property):
                try:
                    clients.append(getattr(aws, name))
                except RuntimeError:  # a client this AwsClients did not open
                    continue
        assert len(clients) >= len(ALL_SERVICES), clients
        for client in clients:
            client.meta.events.register("provide-client-params", self._called)
            client.meta.events.register("after-call", self._answered)

    def completed(self, action: str) -> asyncio.Event:
        """Set once a call needing this IAM action (`sqs:ChangeMessageVisibility`) has had its answer."""
        return self._completed.setdefault(action, asyncio.Event())

    def _called(self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        needed = list(permissions_of(model.service_model.service_name, model.name, params))
        self.used.update(needed)
        context[CONTEXT_KEY] = needed  # the same dict reaches `after-call`

    def _answered(
        self, http_response: Any, parsed: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        for permission in context.get(CONTEXT_KEY, []):
            self.completed(permission.action).set()
        code = str(parsed.get("Error", {}).get("Code", "")) if isinstance(parsed, Mapping) else ""
        if code in DENIED_CODES or getattr(http_response, "status_code", 200) == 403:
            self.denied.extend(context.get(CONTEXT_KEY, []))
            self.denied_event.set()

    def permissions(self) -> set[Permission]:
        return set(self.used)
