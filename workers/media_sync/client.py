"""The provider's HTTP API (httpx, async): bearer auth with one refresh on 401, retries with backoff on 429,
5xx and network errors honouring `Retry-After`, timeouts on every request, pagination, and downloads whose
every hop passes the URL policy (workers/media_sync/safety.py)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from shared.errors import Fatal, Retry, Transient
from workers.media_sync.config import MediaSyncSettings
from workers.media_sync.models import ListedMedia, ListingPage
from workers.media_sync.safety import UnsafeUrl, UrlPolicy

if TYPE_CHECKING:
    from workers.media_sync.auth import TokenManager

log = logging.getLogger("fleet.media_sync")

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class NotFoundAtSource(Exception):
    """404: the media was deleted at the provider."""


class ProviderRefused(Fatal):
    code = "PROVIDER_REFUSED"


class SourceChanged(Exception):
    """A resumed download found the source different from the one the upload started with."""


def timeouts(settings: MediaSyncSettings) -> httpx.Timeout:
    return httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout, pool=settings.connect_timeout)


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, float(parsed.timestamp()) - time.time()) if parsed else None


@dataclass
class Backoff:
    base: float
    attempts: int
    max_retry_after: float

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        hinted = retry_after(response) if response is not None else None
        if hinted is not None:
            return hinted
        exp: float = self.base * 2.0 ** (attempt - 1)
        return exp + random.uniform(0, exp * 0.25)

    async def wait(self, attempt: int, what: str, response: httpx.Response | None = None) -> None:
        """Sleep before the next try, or raise when tries are used up or the provider asks for too long."""
        delay = self.delay(attempt, response)
        status = response.status_code if response is not None else None
        if delay > self.max_retry_after:
            raise Retry(f"{what}: provider asked to retry after {delay:.0f}s", delay=delay, code="PROVIDER_THROTTLED")
        if attempt >= self.attempts:
            code = "PROVIDER_THROTTLED" if status == 429 else "PROVIDER_UNAVAILABLE"
            raise Transient(f"{what}: gave up after {attempt} tries (last: {status or 'network error'})", code=code)
        log.info(
            "provider retry", extra={"what": what, "status": status, "attempt": attempt, "delay_s": round(delay, 2)}
        )
        await asyncio.sleep(delay)


class ProviderClient:
    def __init__(
        self,
        settings: MediaSyncSettings,
        http: httpx.AsyncClient,
        tokens: TokenManager,
        policy: UrlPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.tokens = tokens
        self.base = httpx.URL(settings.provider_url.rstrip("/") + "/")
        self.policy = policy or UrlPolicy(allow_loopback=settings.allow_loopback_http)
        self.backoff = Backoff(settings.retry_base_seconds, settings.request_attempts, settings.max_retry_after_seconds)

    # --- API calls (the configured provider URL: trusted configuration) --------------------------------

    async def get_json(self, path: str, params: dict[str, Any]) -> Any:
        url = self.base.join(path)
        rejected: str | None = None
        attempt = 0
        while True:
            attempt += 1
            token = await self.tokens.access_token(reject=rejected)
            try:
                response = await self.http.get(url, params=params, headers=_bearer(token))
            except httpx.TransportError as exc:
                log.info("provider request failed", extra={"what": path, "error": type(exc).__name__})
                await self.backoff.wait(attempt, f"GET {path}")
                continue
            if response.status_code == 401 and rejected is None:
                rejected = token  # refreshed once; a second 401 is an error
                attempt -= 1
                continue
            if response.status_code in RETRYABLE:
                await self.backoff.wait(attempt, f"GET {path}", response)
                continue
            if response.status_code >= 400:
                raise ProviderRefused(f"GET {path}: HTTP {response.status_code}")
            try:
                return response.json()
            except ValueError:
                raise Transient(f"GET {path}: response is not JSON", code="PROVIDER_BAD_RESPONSE") from None

    async def pages(self, per_page: int) -> AsyncIterator[tuple[int, list[ListedMedia], int]]:
        """Every page of the library, in order: (page number, valid entries, number of invalid entries)."""
        page = 1
        while True:
            raw = await self.get_json("media", {"page": page, "per_page": per_page})
            try:
                listing = ListingPage.model_validate(raw)
            except ValidationError:
                raise Transient(f"listing page {page} is malformed", code="PROVIDER_BAD_RESPONSE") from None
            valid: list[ListedMedia] = []
            for entry in listing.media:
                try:
                    valid.append(ListedMedia.model_validate(entry))
                except ValidationError:
                    continue
            yield page, valid, len(listing.media) - len(valid)
            if page >= listing.pages or not listing.media:
                return
            if page >= self.settings.max_pages:
                raise Fatal(f"listing has more than {self.settings.max_pages} pages", code="PROVIDER_LOOPING")
            page += 1

    # --- downloads (URLs from messages and redirects: untrusted) ---------------------------------------

    def download_url(self, media_id: str, given: str | None) -> httpx.URL:
        if given:
            try:
                return httpx.URL(given)
            except httpx.InvalidURL:
                raise UnsafeUrl("refused a download URL that does not parse") from None
        return self.base.join(f"media/{media_id}/download")

    async def open_download(self, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        """A streaming response with the bytes, redirects followed hop by hop, with retries.

        404 raises `NotFoundAtSource`; other refusals `ProviderRefused`; the caller closes the response.
        """
        rejected: str | None = None
        attempt = 0
        while True:
            attempt += 1
            token = await self.tokens.access_token(reject=rejected)
            try:
                response = await self._follow(url, headers, token)
            except httpx.TransportError as exc:
                log.info("download request failed", extra={"error": type(exc).__name__})
                await self.backoff.wait(attempt, "download")
                continue
            status = response.status_code
            if status in (200, 206):
                return response
            await response.aclose()
            if status == 404:
                raise NotFoundAtSource(str(url))
            if status == 401 and rejected is None:
                rejected = token
                attempt -= 1
                continue
            if status in RETRYABLE:
                await self.backoff.wait(attempt, "download", response)
                continue
            raise ProviderRefused(f"download: HTTP {status}")

    async def _follow(self, url: httpx.URL, headers: dict[str, str], token: str) -> httpx.Response:
        for _ in range(MAX_REDIRECTS + 1):
            pinned = await self.policy.pin(url)
            sent = {**headers, "Host": pinned.host_header, "Accept-Encoding": "identity"}
            if _same_origin(url, self.base):
                sent.update(_bearer(token))  # the provider's token goes to the provider only
            request = self.http.build_request("GET", pinned.url, headers=sent, extensions=pinned.extensions)
            response = await self.http.send(request, stream=True, follow_redirects=False)
            if response.status_code not in REDIRECTS:
                return response
            location = response.headers.get("Location")
            await response.aclose()
            if not location:
                raise ProviderRefused("download: redirect without a Location")
            try:
                url = url.join(location)
            except httpx.InvalidURL:
                raise UnsafeUrl("refused a redirect to a URL that does not parse") from None
        raise ProviderRefused(f"download: more than {MAX_REDIRECTS} redirects")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
