"""The critical write: the job's final state in `fleet-jobs`, retried by the seed's policy.

The update uses a DynamoDB client of its own with botocore's retries off (one HTTP request per call):
the shared client's standard mode would retry up to 5 more times inside every one of our attempts,
hiding failures and multiplying the worst case. Our policy is the seed's: 3 attempts, sleeping base·2^(n-1) + jitter
(1 s, 2 s, ...). When every attempt fails, `TrackingFailed` (a `Transient`) sends the message back to the
runtime, which retries it with its own backoff and finally dead-letters it with the reason.

The update never clobbers: it SETs only `stages.finalizer` and top-level attributes of its own, and
appends to `history`, so other stages' data (written by shared/jobs.py) is kept.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from shared.clients import client_config, emulator_credentials
from shared.errors import Transient, error_code, is_conditional_failure
from shared.jobs import from_item, now_iso, to_item
from shared.settings import FleetSettings
from workers.finalizer.summary import Summary, iso

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = logging.getLogger("fleet.finalizer")

STAGE = "finalizer"

TrackingClientFactory = Callable[[], AbstractAsyncContextManager["DynamoDBClient"]]


class TrackingFailed(Transient):
    code = "TRACKING_FAILED"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base: float = 1.0
    jitter: float = 0.3

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep after failed attempt `attempt` (from 1): base·2^(attempt-1) plus up to `jitter`."""
        jitter: float = (rng or random).uniform(0, self.jitter)
        return self.base * 2.0 ** (attempt - 1) + jitter


def dedicated_dynamodb(
    settings: FleetSettings,
    *,
    endpoint_url: str | None = None,
    read_timeout: float = 10.0,
    session: AioSession | None = None,
) -> TrackingClientFactory:
    """A factory of DynamoDB clients without botocore retries, aimed at `endpoint_url`.

    The stage normally uses the process-wide `services.aws.dynamodb_once`; this is for pointing the
    tracking update somewhere else (a fault-injecting proxy in the tests), one client per update.
    """
    session = session or get_session()
    creds = emulator_credentials(settings)

    def open_client() -> AbstractAsyncContextManager[DynamoDBClient]:
        return session.create_client(
            "dynamodb",
            region_name=settings.region,
            endpoint_url=endpoint_url or settings.endpoint_url,
            # One HTTP request per call, so each of our attempts is exactly one UpdateItem.
            config=client_config(2, read_timeout, total_attempts=1),
            aws_access_key_id=creds.get("aws_access_key_id"),
            aws_secret_access_key=creds.get("aws_secret_access_key"),
        )

    return open_client


@dataclass(frozen=True)
class Tracked:
    attempts: int
    item: dict[str, Any]  # the job item as it is after the update
    already: bool = False  # this job and final status had been recorded before (a redelivery, a lost reply)
    superseded: bool = False  # a final event of later time (or, at the same time, higher rank) was recorded


class Tracker:
    def __init__(
        self,
        table: str,
        open_client: TrackingClientFactory,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self._open = open_client
        self.policy = policy
        self._sleep = sleep
        self._rng = rng

    async def finalize(self, summary: Summary) -> Tracked:
        last: Exception | None = None
        async with self._open() as ddb:
            for attempt in range(1, self.policy.max_attempts + 1):
                try:
                    item, skipped = await self._update(ddb, summary, attempt)
                    return Tracked(
                        attempts=attempt,
                        item=item,
                        already=skipped == "already",
                        superseded=skipped == "superseded",
                    )
                except (ClientError, BotoCoreError) as exc:
                    last = exc
                    if attempt == self.policy.max_attempts:
                        break
                    delay = self.policy.delay(attempt, self._rng)
                    log.warning(
                        "tracking update failed; retrying",
                        extra={
                            "attempt": attempt,
                            "retry_in_s": round(delay, 3),
                            "error_code": error_code(exc) or type(exc).__name__,
                        },
                    )
                    await self._sleep(delay)
        assert last is not None
        code = error_code(last) or type(last).__name__
        raise TrackingFailed(
            f"tracking update failed after {self.policy.max_attempts} attempts: {code}: {last}"
        ) from last

    async def _update(
        self, ddb: DynamoDBClient, summary: Summary, attempt: int, *, create_if_missing: bool = True
    ) -> tuple[dict[str, Any], str | None]:
        now = now_iso()
        data: dict[str, Any] = {
            "status": "completed",
            "timestamp": now,
            "retry_attempts": attempt,
            "final_status": summary.final_status,
        }
        entry: dict[str, Any] = {
            "stage": STAGE,
            "status": "FINALIZED",
            "at": now,
            "final_status": summary.final_status,
            "cost_usd": summary.cost_usd,
            "retry_attempts": attempt,
        }
        duration = Decimal(str(summary.duration_seconds)) if summary.duration_seconds is not None else None
        values = to_item(
            {
                ":status": summary.final_status,
                ":data": data,
                ":now": now,
                ":ct": iso(summary.completed_at),
                ":dur": duration,
                ":metrics": summary.processing_metrics(),
                ":cost": summary.cost_usd,
                ":entry": [entry],
                ":empty": [],
                ":key": summary.final_status,
                ":keys": {summary.final_status},
                ":order": final_order(summary),
            }
        )
        try:
            resp = await ddb.update_item(
                TableName=self.table,
                Key=to_item({"execution_id": summary.execution_id}),
                UpdateExpression=(
                    "SET #status = :status, #stages.#fin = :data, updated_at = :now, completion_time = :ct, "
                    "total_duration_seconds = :dur, processing_metrics = :metrics, cost_estimate_usd = :cost, "
                    "#history = list_append(if_not_exists(#history, :empty), :entry), final_order = :order "
                    "ADD #done :keys"
                ),
                # `stages.finalizer` is an invalid path until the map exists (the seed's update failed on
                # any item not created by its trigger): create it first when it is missing. `finalized` holds
                # the final statuses recorded: a second update for one (a redelivery after a crash, a retry
                # after a lost reply) fails its condition instead of adding a second FINALIZED entry.
                # `final_order` keeps the latest event: a FAILED event that arrives after a COMPLETED one it
                # preceded (a late redelivery) cannot overwrite it, however the two race.
                ConditionExpression=(
                    "attribute_exists(#stages) AND NOT contains(#done, :key) "
                    "AND (attribute_not_exists(final_order) OR final_order < :order)"
                ),
                ExpressionAttributeNames={
                    "#status": "status",
                    "#stages": "stages",
                    "#fin": STAGE,
                    "#history": "history",
                    "#done": "finalized",
                },
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            found: Any = exc.response.get("Item", {})
            current = from_item(dict(found))
            if summary.final_status in current.get("finalized", set()):
                return current, "already"
            if "stages" in current and str(current.get("final_order", "")) >= final_order(summary):
                return current, "superseded"
            if not create_if_missing:
                raise
            await self._create_maps(ddb, summary.execution_id, now)
            return await self._update(ddb, summary, attempt, create_if_missing=False)
        return from_item(dict(resp.get("Attributes", {}))), None

    async def _create_maps(self, ddb: DynamoDBClient, execution_id: str, now: str) -> None:
        await ddb.update_item(
            TableName=self.table,
            Key=to_item({"execution_id": execution_id}),
            UpdateExpression=(
                "SET #stages = if_not_exists(#stages, :map), #history = if_not_exists(#history, :list), "
                "created_at = if_not_exists(created_at, :now)"
            ),
            ExpressionAttributeNames={"#stages": "stages", "#history": "history"},
            ExpressionAttributeValues=to_item({":map": {}, ":list": [], ":now": now}),
        )


RANK = {"FAILED": 0, "PARTIAL_SUCCESS": 1, "COMPLETED": 2}


def final_order(summary: Summary) -> str:
    """Orders a job's final events: by their completion time, then by outcome (COMPLETED wins a tie).
    ISO-8601 UTC strings of one format compare as their times do."""
    return f"{iso(summary.completed_at)}|{RANK[summary.final_status]}"
