"""Turning an SQS body into the object a stage validates: JSON, with an SNS envelope removed."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import Poison

MAX_BODY = 256 * 1024  # SQS's own limit is 1 MiB; nothing fleet accepts is legitimately larger


def unwrap(body: str) -> Any:
    """Parse a message body, unwrapping an SNS `Notification` envelope when present."""
    if len(body) > MAX_BODY:
        raise Poison(f"body is {len(body)} bytes, over the {MAX_BODY}-byte limit", code="TOO_LARGE")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise Poison(f"body is not JSON: {exc.msg} at position {exc.pos}", code="NOT_JSON") from None
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        inner = data["Message"]
        try:
            return json.loads(inner)
        except json.JSONDecodeError:
            return inner
    return data
