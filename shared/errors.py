"""The errors a stage raises to tell the runtime what to do with its message.

- `Retry`: expected and quiet — try again later (optionally after `delay` seconds).
- `Transient`: an infrastructure hiccup (throttling, 5xx, timeouts) — retried with backoff.
- `Fatal`: retrying cannot help — dead-letter now, with the reason.
- `Poison`: the message itself is malformed — dead-letter now, never handed to the stage.

Any other exception is treated as retryable: a bug that fails every attempt still ends in the DLQ
after `max_attempts`, with its reason, instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Awaitable

from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError


class FleetError(Exception):
    """Base of every error the runtime understands."""

    code = "ERROR"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class Retry(FleetError):
    code = "RETRY"

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None, code: str | None = None):
        super().__init__(reason, code=code)
        self.delay = delay


class Transient(Retry):
    code = "TRANSIENT"


class Fatal(FleetError):
    code = "FATAL"


class Poison(Fatal):
    code = "POISON"


# botocore error codes that mean "the service is busy or briefly unavailable".
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "TransactionConflictException",
        "RequestTimeout",
    }
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_conditional_failure(exc: BaseException) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


async def written(call: Awaitable[object]) -> bool:
    """Await a conditional DynamoDB write: True if it was written, False if its condition failed."""
    try:
        await call
    except ClientError as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True


def classify(exc: BaseException) -> FleetError:
    """Translate any exception into the runtime's vocabulary."""
    if isinstance(exc, FleetError):
        return exc
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return Transient(f"AWS {code or status}: {exc}", code=code or "AWS_5XX")
        return Retry(f"AWS {code}: {exc}", code=code or "AWS_ERROR")
    if isinstance(exc, ConnectionError | ReadTimeoutError | TimeoutError | OSError):
        return Transient(f"{type(exc).__name__}: {exc}", code="NETWORK")
    return Retry(f"{type(exc).__name__}: {exc}", code="UNHANDLED")
