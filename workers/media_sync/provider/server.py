"""A media cloud over real HTTP: OAuth2 refresh tokens, a paged listing, and `Range` downloads of deterministic
bytes (up to 4 GiB and beyond, generated on the fly), with knobs for the failures a real provider has.

API (shared/contracts.md, media-sync):
  POST /oauth/token                      form grant_type=refresh_token, refresh_token, client_id, client_secret
  GET  /media?page=N&per_page=M          Bearer; {"media": [...], "page", "pages"}
  GET  /media/{id}/download              Bearer; 302 to a signed /blobs/{id} URL (or the bytes when redirects
                                         are off); 404 when the item is deleted at source
  GET  /blobs/{id}?v=..&sig=..           the bytes; Range, If-Range, ETag, Last-Modified

Control (loopback tools only: tests, the demo and the benchmark drive it):
  POST /_control/reset      {"library": [...], "refresh_token", "access_token", "knobs": {...}}
  POST /_control/knobs      merge knobs (see `Knobs`)
  POST /_control/library    {"items": [{"id", "filename", "size", "version"?}]} replaces the library
  GET  /_control/stats      requests seen, bytes sent, token refreshes
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web

from workers.media_sync.provider.content import etag_of, iter_range

SIGNING_KEY = secrets.token_bytes(16)
EPOCH = 1_700_000_000


@dataclass
class Item:
    id: str
    filename: str
    size: int
    version: int = 1
    content_type: str = "video/mp4"
    created_at: str = "2026-11-01T10:00:00Z"

    def listing(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "size": self.size,
            "created_at": self.created_at,
            "content_type": self.content_type,
        }

    @property
    def etag(self) -> str:
        return etag_of(self.id, self.version, self.size)

    @property
    def last_modified(self) -> str:
        return formatdate(EPOCH + self.version * 3600, usegmt=True)


@dataclass
class Knobs:
    """Failures on demand. Counts are consumed as requests hit them."""

    rate: float | None = None  # bytes/s for all downloads together: the provider's link
    not_found: list[str] = field(default_factory=list)  # ids whose download is 404 (deleted at source)
    throttle: int = 0  # the next N API requests (token, list, download) get 429
    retry_after: float = 1.0  # seconds, sent with every 429
    server_errors: int = 0  # the next N API requests get 503
    slow: dict[str, float] = field(default_factory=dict)  # "token" | "list" | "download" | "blob" -> delay s
    drop_after: dict[str, int] = field(default_factory=dict)  # id -> close the connection after N body bytes (once)
    fail_after_drop: dict[str, int] = field(default_factory=dict)  # id -> HTTP status for requests after a drop
    redirect: dict[str, str] = field(default_factory=dict)  # id -> Location its download redirects to
    redirects: bool = True  # /media/{id}/download redirects to a signed /blobs URL
    token_error: str | None = None  # the token endpoint refuses with this OAuth error
    token_expires_in: int = 7 * 24 * 3600


@dataclass
class Stats:
    token_refreshes: int = 0
    token_failures: int = 0
    list_requests: int = 0
    throttled: int = 0
    downloads: list[dict[str, Any]] = field(default_factory=list)  # one per /blobs (or direct) response
    bytes_sent: dict[str, int] = field(default_factory=dict)


class Link:
    """Paces every download's bytes through one shared budget, as one network link would."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._next = time.monotonic()

    async def send(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        # A sender that fell behind (a busy loop, a slow reader) may catch up by up to 50 ms, as a link's
        # buffers would let it; beyond that the time is lost, as on a real link.
        start = max(now - 0.05, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class Provider:
    def __init__(self, *, client_id: str = "fleet-demo", client_secret: str = "demo-client-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.library: dict[str, Item] = {}
        self.knobs = Knobs()
        self.stats = Stats()
        self.refresh_tokens: set[str] = set()
        self.access_tokens: dict[str, float] = {}
        self.link = Link()

    # --- state -------------------------------------------------------------------------------------

    def reset(self, body: dict[str, Any]) -> None:
        self.library = {}
        self.set_library(body.get("library", []))
        self.knobs = Knobs()
        self.set_knobs(body.get("knobs", {}))
        self.stats = Stats()
        self.refresh_tokens = {body["refresh_token"]} if body.get("refresh_token") else set()
        self.access_tokens = {}
        if body.get("access_token"):
            self.access_tokens[body["access_token"]] = time.time() + float(body.get("access_expires_in", 3600))

    def set_library(self, items: list[dict[str, Any]]) -> None:
        self.library = {str(i["id"]): Item(**i) for i in items}

    def set_knobs(self, changes: dict[str, Any]) -> None:
        merged = {**asdict(self.knobs), **changes}
        self.knobs = Knobs(**merged)
        self.link.rate = self.knobs.rate

    # --- helpers -----------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        expiry = self.access_tokens.get(token)
        return expiry is not None and expiry > time.time()

    async def _api_faults(self, kind: str) -> web.Response | None:
        """Delays, 429s and 5xxs for an API request, in that order."""
        delay = self.knobs.slow.get(kind, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if self.knobs.throttle > 0:
            self.knobs.throttle -= 1
            self.stats.throttled += 1
            return web.json_response(
                {"error": "rate_limited"}, status=429, headers={"Retry-After": f"{self.knobs.retry_after:g}"}
            )
        if self.knobs.server_errors > 0:
            self.knobs.server_errors -= 1
            return web.json_response({"error": "unavailable"}, status=503)
        return None

    def _sign(self, item: Item) -> str:
        return hmac.new(SIGNING_KEY, f"{item.id}:{item.version}".encode(), hashlib.sha256).hexdigest()[:32]

    # --- API ---------------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        fault = await self._api_faults("token")
        if fault is not None:
            return fault
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            self.stats.token_failures += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        presented = str(form.get("refresh_token", ""))
        if self.knobs.token_error or presented not in self.refresh_tokens:
            self.stats.token_failures += 1
            return web.json_response({"error": self.knobs.token_error or "invalid_grant"}, status=400)
        # Rotation: a refresh token works once. A second refresh with the same token fails, as at real
        # providers, which is why clients must refresh once, not once per caller.
        self.refresh_tokens.discard(presented)
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.refresh_tokens.add(refresh)
        self.access_tokens[access] = time.time() + self.knobs.token_expires_in
        self.stats.token_refreshes += 1
        return web.json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": self.knobs.token_expires_in,
                "token_type": "Bearer",
            }
        )

    async def media(self, request: web.Request) -> web.Response:
        fault = await self._api_faults("list")
        if fault is not None:
            return fault
        if not self._authorised(request):
            return web.json_response({"error": "invalid_token"}, status=401)
        self.stats.list_requests += 1
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = min(1000, max(1, int(request.query.get("per_page", "100"))))
        except ValueError:
            return web.json_response({"error": "bad paging"}, status=400)
        items = list(self.library.values())
        pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return web.json_response({"media": [i.listing() for i in chunk], "page": page, "pages": pages})

    async def download(self, request: web.Request) -> web.StreamResponse:
        fault = await self._api_faults("download")
        if fault is not None:
            return fault
        if not self._authorised(request):
            return web.json_response({"error": "invalid_token"}, status=401)
        media_id = request.match_info["id"]
        item = self.library.get(media_id)
        if item is None or media_id in self.knobs.not_found:
            return web.json_response({"error": "not_found"}, status=404)
        if media_id in self.knobs.redirect:
            raise web.HTTPFound(self.knobs.redirect[media_id])
        if self.knobs.redirects:
            raise web.HTTPFound(f"/blobs/{item.id}?v={item.version}&sig={self._sign(item)}")
        return await self._serve(request, item)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        item = self.library.get(request.match_info["id"])
        if item is None or item.id in self.knobs.not_found:
            return web.json_response({"error": "not_found"}, status=404)
        if request.query.get("sig") != self._sign(item) or request.query.get("v") != str(item.version):
            return web.json_response({"error": "expired link"}, status=403)
        return await self._serve(request, item)

    async def _serve(self, request: web.Request, item: Item) -> web.StreamResponse:
        delay = self.knobs.slow.get("blob", 0.0)
        if delay:
            await asyncio.sleep(delay)
        record: dict[str, Any] = {
            "id": item.id,
            "range": request.headers.get("Range"),
            "if_range": request.headers.get("If-Range"),
            "sent": 0,
        }
        self.stats.downloads.append(record)
        if item.id in self.knobs.fail_after_drop and item.id not in self.knobs.drop_after:
            record["status"] = self.knobs.fail_after_drop[item.id]
            return web.json_response({"error": "refused"}, status=record["status"])
        start, end, status = 0, item.size, 200
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted and (if_range is None or if_range in (item.etag, item.last_modified)):
            parsed = _parse_range(wanted, item.size)
            if parsed is None:
                record["status"] = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{item.size}"})
            start, end, status = parsed[0], parsed[1], 206
        record["status"] = status
        headers = {
            "Content-Type": item.content_type,
            "Content-Length": str(end - start),
            "ETag": item.etag,
            "Last-Modified": item.last_modified,
            "Accept-Ranges": "bytes",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{item.size}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        drop_at = self.knobs.drop_after.pop(item.id, None)
        sent = 0
        for piece in iter_range(item.id, item.version, start, end):
            if drop_at is not None and sent + len(piece) >= drop_at:
                piece = piece[: drop_at - sent]
                await self.link.send(len(piece))
                await response.write(piece)
                sent += len(piece)
                self._count(item, record, len(piece))
                # The connection dies mid-body, as a flaky network does: the client sees a short read.
                assert request.transport is not None
                request.transport.close()
                record["dropped"] = True
                return response
            await self.link.send(len(piece))
            await response.write(piece)
            sent += len(piece)
            self._count(item, record, len(piece))
        await response.write_eof()
        return response

    def _count(self, item: Item, record: dict[str, Any], n: int) -> None:
        record["sent"] += n
        self.stats.bytes_sent[item.id] = self.stats.bytes_sent.get(item.id, 0) + n

    # --- control -----------------------------------------------------------------------------------

    async def control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action == "stats":
            return web.json_response(asdict(self.stats))
        body = await request.json() if request.can_read_body else {}
        if action == "reset":
            self.reset(body)
        elif action == "knobs":
            self.set_knobs(body)
        elif action == "library":
            self.set_library(body.get("items", []))
        else:
            return web.json_response({"error": f"unknown control {action!r}"}, status=404)
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/media", self.media)
        app.router.add_get("/media/{id}/download", self.download)
        app.router.add_get("/blobs/{id}", self.blob)
        app.router.add_route("*", "/_control/{action}", self.control)
        return app


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` (one range) -> [start, end), or None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size > 0 else None
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return (start, end) if start < size and start < end else None


async def serve(provider: Provider, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
    return runner, f"http://{bound[0]}:{bound[1]}"


def library_of(count: int, size: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:05d}", "filename": f"clip-{i:05d}.mp4", "size": size} for i in range(1, count + 1)]
