"""Structured logs: one JSON object per line (or one readable text line), carrying the context of the
message being handled.

Context (worker, message id, job id, attempt) lives in a ContextVar, so every log line written while a
handler runs — including lines from the stage's own code — carries it without being passed around.

Nothing a message carries can forge or poison a line:
- secrets never reach the output: values under secret-looking keys are masked; values registered with
  `register_secret`, and secret-shaped values (AWS access key ids, bearer tokens, GitHub tokens,
  `password=...`) are masked wherever they appear, in any field or in the message itself;
- control characters (newlines, ANSI escapes, bidi overrides) are escaped in every format, so a field cannot
  start a forged line or repaint a terminal;
- very long values are cut (`MAX_VALUE` characters).
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
_registered: re.Pattern[str] | None = None

SECRET_KEY = re.compile(r"(secret|token|password|passwd|authorization|api[_-]?key|credential)", re.I)
MASK = "***"
MAX_VALUE = 2000

# Secret-shaped text, wherever it appears. Group 1 keeps the name of a `name=value` pair.
SECRET_SHAPES = re.compile(
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\b[Bb]earer\s+[A-Za-z0-9\-._~+/]{8,}=*"  # bearer tokens
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b"  # GitHub tokens
    r"|(\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|refresh[_-]?token)[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s&\"',;}\\]+",
    re.I,
)
# C0/C1 controls, zero-width and bidirectional override characters.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Never print this value again, whatever key or message it turns up in."""
    global _registered
    if value and len(value) >= 6 and value not in _secrets:
        _secrets.add(value)
        _registered = re.compile("|".join(re.escape(v) for v in sorted(_secrets, key=len, reverse=True)))


def mask(text: str) -> str:
    """`text` with registered secrets and secret-shaped values masked."""
    if _registered is not None:
        text = _registered.sub(MASK, text)
    return SECRET_SHAPES.sub(lambda m: (m.group(1) or "") + MASK, text)


def escape_controls(text: str) -> str:
    return CONTROLS.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), text)


def clean(text: str) -> str:
    """Free text from a message made safe for a log line or a notification: masked, controls escaped."""
    return escape_controls(mask(text))


def redact(value: Any, key: str = "") -> Any:
    """Mask values under secret-looking keys, and cut long strings (secret-shaped text is masked later,
    on the whole line)."""
    if key and SECRET_KEY.search(key):
        return MASK
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else f"{value[:MAX_VALUE]}…(+{len(value) - MAX_VALUE} chars)"
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
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


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get())
    for key, value in record.__dict__.items():
        if key not in _RESERVED and key[0] != "_":
            fields[key] = value
    return {k: redact(v, k) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": redact(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # JSON escapes control characters itself; `\u2028`-style separators too with ensure_ascii.
        return mask(json.dumps(entry, default=str, ensure_ascii=True))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tail = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = clean(f"{record.levelname:<7} {record.name}: {redact(record.getMessage())} {tail}".rstrip())
        if record.exc_info:
            # A traceback keeps its lines, each indented: none can pass for a log line of its own.
            line += "".join(f"\n    | {clean(t)}" for t in self.formatException(record.exc_info).splitlines())
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
