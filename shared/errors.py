"""The errors a stage raises to tell the runtime what to do with its message.

- `Retry`: expected and quiet — try again later (optionally after `delay` seconds).
- `Transient`: an infrastructure hiccup (throttling, 5xx, timeouts) — retried with backoff.
- `Fatal`: retrying cannot help — dead-letter now, with the reason.
- `Poison`: the message itself is malformed — dead-letter now, never handed to the stage.

Any other exception is treated as retryable: a bug that fails every attempt still ends in the DLQ
after `max_attempts`, with its reason, instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

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


# The codes S3 answers with for an object that is not there (HeadObject has no body: a bare 404).
S3_NO_SUCH_KEY = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_conditional_failure(exc: BaseException) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


Mine = Callable[[Mapping[str, Any]], bool]


async def written(operation: Callable[..., Awaitable[Any]], /, *, mine: Mine | None = None, **request: Any) -> bool:
    """Make a conditional DynamoDB write: True if it was written, False if its condition failed.

        ok = await written(ddb.update_item, mine=owned("owner", token, state="SEALED"), TableName=..., ...)

    A write whose reply was lost (it took effect, the answer never came) is retried by botocore, and the retry
    fails the condition that its own first attempt changed. With `mine`, a failed condition is checked against
    the item as it is (`ReturnValuesOnConditionCheckFailure=ALL_OLD`): if `mine` recognises it as this writer's
    own earlier success, the write is reported written.
    """
    if mine is not None:
        request.setdefault("ReturnValuesOnConditionCheckFailure", "ALL_OLD")
    try:
        await operation(**request)
    except ClientError as exc:
        if not is_conditional_failure(exc):
            raise
        current = exc.response.get("Item")
        return bool(mine is not None and isinstance(current, Mapping) and mine(current))
    return True


def owned(attribute: str, token: str, **expected: str) -> Mine:
    """`mine` for items that carry the writer's token in `attribute` (and, after the write, `expected` values)."""

    def check(item: Mapping[str, Any]) -> bool:
        def value(name: str) -> Any:
            return (item.get(name) or {}).get("S")

        return value(attribute) == token and all(value(k) == v for k, v in expected.items())

    return check


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
