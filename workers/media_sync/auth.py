"""The provider's OAuth2 tokens, kept in Secrets Manager (`fleet/media-provider`).

A token that expires within the threshold (the seed's 24 h) is refreshed with the refresh-token grant and
written back with `put_secret_value`. Providers rotate refresh tokens (each works once), so a refresh must
happen once however many callers see the expiring token at the same moment:
- within a process, one asyncio lock: the first caller refreshes, the others wait and reuse its token;
- across processes, a lease in `fleet-leases` keyed by the secret version being replaced: one process
  refreshes, the others poll the secret until the new version appears; and the write itself carries a
  `ClientRequestToken` derived from that version, so even two refreshes could not both be written.
A failed refresh publishes one alert on `fleet-notifications`. Tokens and the client secret are registered
with the log redactor the moment they are read, so they never reach a log line in any format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from shared.errors import Retry, Transient, error_code
from shared.idempotency import AlreadyInProgress, Idempotency
from shared.logs import register_secret
from workers.media_sync.client import RETRYABLE, Backoff
from workers.media_sync.config import MediaSyncSettings

if TYPE_CHECKING:
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_sns import SNSClient

log = logging.getLogger("fleet.media_sync.auth")

REFRESH_LEASE_SECONDS = 60.0
WAIT_FOR_OTHER_SECONDS = 90.0
FAILURE_HOLD_SECONDS = 60.0  # after a failed refresh, callers back off instead of retrying (and alerting) at once
_NAMESPACE = uuid.UUID("6f1d7e0c-2b7a-4e55-9d8e-5a8f0c6b9e21")


class AuthFailed(Retry):
    """The provider refused the refresh; retried later (an operator may need to fix the secret)."""

    code = "AUTH_FAILED"


class Credentials(BaseModel):
    client_id: str
    client_secret: str
    access_token: str = ""
    refresh_token: str
    expires_at: str = ""

    def expires(self) -> float:
        try:
            when = datetime.fromisoformat(self.expires_at.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    def register(self) -> None:
        for value in (self.client_secret, self.access_token, self.refresh_token):
            register_secret(value)


@dataclass
class Current:
    credentials: Credentials
    version: str


class Alerts:
    """SNS alerts on `fleet-notifications`; an alert that cannot be sent is logged, never raised."""

    def __init__(self, sns: SNSClient, topic_name: str) -> None:
        self._sns = sns
        self.topic_name = topic_name
        self._arn: str | None = None

    async def send(self, subject: str, detail: dict[str, Any]) -> bool:
        try:
            if self._arn is None:
                async for page in self._sns.get_paginator("list_topics").paginate():
                    for topic in page.get("Topics", []):
                        if topic["TopicArn"].rsplit(":", 1)[-1] == self.topic_name:
                            self._arn = topic["TopicArn"]
                if self._arn is None:
                    raise LookupError(f"SNS topic {self.topic_name!r} not found")
            await self._sns.publish(
                TopicArn=self._arn,
                Subject=subject[:99],
                Message=json.dumps(detail),
                MessageAttributes={"alert": {"DataType": "String", "StringValue": "media-sync-auth"}},
            )
        except Exception as exc:
            log.error("alert not sent", extra={"error": str(exc)[:300]})
            return False
        log.warning("alert sent", extra={"subject": subject})
        return True


class TokenManager:
    def __init__(
        self,
        settings: MediaSyncSettings,
        secrets: SecretsManagerClient,
        secret_name: str,
        guard: Idempotency,
        http: Callable[[], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]],
        alerts: Alerts,
    ) -> None:
        self.settings = settings
        self._sm = secrets
        self.secret_name = secret_name
        self._guard = guard
        self._http = http
        self._alerts = alerts
        self._lock = asyncio.Lock()
        self._cached: Credentials | None = None
        self._failed_until = 0.0
        self._failure = ""
        self.refreshes = 0  # refreshes this process performed (tests and logs)
        self._backoff = Backoff(
            settings.retry_base_seconds, settings.request_attempts, settings.max_retry_after_seconds
        )

    def _fresh(self, creds: Credentials, reject: str | None) -> bool:
        return (
            bool(creds.access_token)
            and creds.access_token != reject
            and creds.expires() - time.time() > self.settings.token_refresh_threshold_seconds
        )

    async def access_token(self, *, reject: str | None = None) -> str:
        """A token valid beyond the threshold. `reject`: a token the provider just refused (401)."""
        async with self._lock:
            if self._cached is not None and self._fresh(self._cached, reject):
                return self._cached.access_token
            if time.monotonic() < self._failed_until:
                raise AuthFailed(self._failure, delay=self._failed_until - time.monotonic())
            current = await self.read()
            if not self._fresh(current.credentials, reject):
                current = await self._refresh(current)
            self._cached = current.credentials
            return current.credentials.access_token

    async def read(self) -> Current:
        try:
            resp = await self._sm.get_secret_value(SecretId=self.secret_name)
        except ClientError as exc:
            raise Transient(f"secret {self.secret_name}: {error_code(exc)}", code="SECRET_UNREADABLE") from exc
        try:
            data = json.loads(resp.get("SecretString") or "{}")
            creds = Credentials.model_validate(data)
        except (ValueError, ValidationError) as exc:
            # Never echo the value: a validation error would quote it.
            missing = getattr(exc, "error_count", lambda: 0)()
            raise AuthFailed(
                f"secret {self.secret_name} is not the provider credentials JSON ({missing} fields invalid)",
                delay=FAILURE_HOLD_SECONDS,
            ) from None
        creds.register()
        return Current(creds, resp["VersionId"])

    async def _refresh(self, seen: Current) -> Current:
        key = f"media-sync#token-refresh#{self.secret_name}#{seen.version}"
        deadline = time.monotonic() + WAIT_FOR_OTHER_SECONDS
        while True:
            try:
                await self._guard.run(key, lambda: self._refresh_once(seen), lease_seconds=REFRESH_LEASE_SECONDS)
            except AlreadyInProgress:
                # Another process is refreshing this very version: wait for its write.
                if time.monotonic() > deadline:
                    raise Transient("waited too long for another worker's token refresh", code="AUTH_WAIT") from None
                await asyncio.sleep(0.5)
                current = await self.read()
                if current.version != seen.version:
                    return current
                continue
            current = await self.read()
            if current.version != seen.version:
                return current
            raise Transient("token refresh recorded but the secret did not change", code="AUTH_WAIT")

    async def _refresh_once(self, seen: Current) -> dict[str, str]:
        creds = seen.credentials
        try:
            tokens = await self._grant(creds)
        except AuthFailed as exc:
            self._failed_until = time.monotonic() + FAILURE_HOLD_SECONDS
            self._failure = exc.reason
            await self._alerts.send(
                "fleet media-sync: provider token refresh failed",
                {
                    "worker": "media-sync",
                    "secret": self.secret_name,
                    "error": exc.reason,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "action": "put valid provider credentials in the secret; syncs retry on their own",
                },
            )
            raise
        expires_in = float(tokens.get("expires_in") or 3600)
        new = creds.model_copy(
            update={
                "access_token": str(tokens["access_token"]),
                "refresh_token": str(tokens.get("refresh_token") or creds.refresh_token),
                "expires_at": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(timespec="seconds"),
            }
        )
        new.register()
        request_token = str(uuid.uuid5(_NAMESPACE, f"{self.secret_name}#{seen.version}"))
        for attempt in range(1, 4):
            try:
                resp = await self._sm.put_secret_value(
                    SecretId=self.secret_name, SecretString=new.model_dump_json(), ClientRequestToken=request_token
                )
                break
            except ClientError as exc:
                if error_code(exc) == "ResourceExistsException":
                    log.warning("another worker already wrote the refreshed token")
                    return {"version": request_token}
                if attempt == 3:
                    raise
                await asyncio.sleep(attempt)
        self.refreshes += 1
        if expires_in <= self.settings.token_refresh_threshold_seconds:
            log.warning(
                "provider tokens live shorter than the refresh threshold: every call will refresh",
                extra={"expires_in_s": expires_in, "threshold_s": self.settings.token_refresh_threshold_seconds},
            )
        log.info("provider token refreshed", extra={"version": resp["VersionId"], "expires_at": new.expires_at})
        return {"version": resp["VersionId"]}

    async def _grant(self, creds: Credentials) -> dict[str, Any]:
        url = self.settings.provider_url.rstrip("/") + "/oauth/token"
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.refresh_token,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
        }
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._http() as http:
                    response = await http.post(url, data=form)
            except httpx.TransportError as exc:
                log.info("token request failed", extra={"error": type(exc).__name__})
                await self._backoff.wait(attempt, "token refresh")
                continue
            if response.status_code in RETRYABLE:
                await self._backoff.wait(attempt, "token refresh", response)
                continue
            if response.status_code != 200:
                reason = _oauth_error(response)
                raise AuthFailed(
                    f"token refresh refused: HTTP {response.status_code} {reason}", delay=FAILURE_HOLD_SECONDS
                )
            try:
                body = response.json()
                if not isinstance(body, dict) or not body.get("access_token"):
                    raise ValueError("no access_token")
            except ValueError:
                raise AuthFailed(
                    "token refresh: response without an access token", delay=FAILURE_HOLD_SECONDS
                ) from None
            for field in ("access_token", "refresh_token"):
                register_secret(str(body.get(field) or ""))
            return body


def _oauth_error(response: httpx.Response) -> str:
    """The OAuth `error` code only (RFC 6749 §5.2); descriptions may echo what was sent."""
    try:
        error = response.json().get("error", "")
    except (ValueError, AttributeError):
        return ""
    return str(error)[:64] if isinstance(error, str) else ""
