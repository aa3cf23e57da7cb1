"""Structured logs: one JSON object per line, carrying the context of the message being handled.

Context (worker, message id, job id, attempt) lives in a ContextVar, so every log line written while a
handler runs — including lines from the stage's own code — carries it without being passed around.
Secrets never reach the output: keys that look secret are masked, and values registered with
`register_secret` are replaced wherever they appear.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_context: ContextVar[Mapping[str, Any]] = ContextVar("fleet_log_context", default={})  # noqa: B039
_secrets: set[str] = set()

SECRET_KEY = re.compile(r"(secret|token|password|passwd|authorization|api[_-]?key|credential)", re.I)
MASK = "***"

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Never print this value again, whatever key or message it turns up in."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(value: Any, key: str = "") -> Any:
    if key and SECRET_KEY.search(key):
        return MASK
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
    return value


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(redact(entry), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        fields = {**_context.get(), **extras}
        tail = " ".join(f"{k}={v}" for k, v in redact(fields).items())
        line = f"{record.levelname:<7} {record.name}: {redact(record.getMessage())} {tail}".rstrip()
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore at DEBUG prints request bodies and signed headers.
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug", "moto", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
