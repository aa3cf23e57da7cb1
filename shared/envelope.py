"""Turning an SQS body into the object a stage validates: JSON, with an SNS envelope removed."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import Poison

MAX_BODY = 256 * 1024  # SQS's own limit is 1 MiB; nothing fleet accepts is legitimately larger


def unwrap(body: str) -> Any:
    """Parse a message body, unwrapping an SNS `Notification` envelope when present."""
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY:
        raise Poison(f"body is {size} bytes, over the {MAX_BODY}-byte limit", code="TOO_LARGE")
    data = _json(body, "body")
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        inner = data["Message"]
        try:
            return _json(inner, "SNS message")
        except Poison:
            return inner
    return data


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Poison(
            f"{what} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", code="NOT_JSON"
        ) from None
    except RecursionError:
        raise Poison(f"{what} is nested too deeply", code="TOO_DEEP") from None
