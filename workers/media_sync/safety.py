"""Download URLs are untrusted: each hop is checked by the address it resolves to, then pinned to it.

- `https` anywhere public; `http` only to loopback, and loopback at all only when
  `FLEET_MEDIA_SYNC_ALLOW_LOOPBACK_HTTP` allows it (local runs, tests);
- never private, link-local (169.254.0.0/16, the metadata service), CGNAT, multicast, reserved or
  unspecified addresses, IPv4-mapped IPv6 included;
- a name is resolved once and the connection goes to the address that was checked (the `Host` header and
  TLS SNI keep the name), so a DNS answer that changes between check and connect cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.errors import Fatal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class UnsafeUrl(Fatal):
    code = "UNSAFE_URL"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_refusal(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why a connection to `ip` is refused, or None when it is allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address (FLEET_MEDIA_SYNC_ALLOW_LOOPBACK_HTTP is off)"
    if ip.is_link_local:
        return "a link-local address (the instance metadata service lives there)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "a reserved, multicast or unspecified address"
    if ip.is_private or not ip.is_global:
        return "a private address"
    return None


@dataclass(frozen=True)
class Pinned:
    """A checked hop: the URL to connect to (host = the checked address) and what to tell the server."""

    url: httpx.URL
    host_header: str
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass
class UrlPolicy:
    allow_loopback: bool = False
    resolver: Resolver = system_resolver
    trusted_hosts: frozenset[str] = frozenset()  # names allowed on private addresses (local compose networks)

    async def pin(self, url: httpx.URL) -> Pinned:
        where = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        if url.scheme not in ("https", "http"):
            raise UnsafeUrl(f"refused {where}: only https (and http to loopback) URLs are fetched")
        if url.userinfo:
            raise UnsafeUrl(f"refused {where}: credentials in a URL")
        if not url.host:
            raise UnsafeUrl("refused a URL without a host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(url.host)]
        except ValueError:
            try:
                resolved = await self.resolver(url.host, port)
            except OSError as exc:
                raise UnsafeUrl(f"refused {where}: {url.host} does not resolve ({exc})") from None
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        if not addresses:
            raise UnsafeUrl(f"refused {where}: {url.host} has no address")
        trusted = url.host.lower() in self.trusted_hosts
        for ip in addresses:
            reason = None if trusted else address_refusal(ip, allow_loopback=self.allow_loopback)
            if reason:
                shown = url.host if str(ip) == url.host else f"{url.host} ({ip})"
                raise UnsafeUrl(f"refused {where}: {shown} is {reason}")
        if url.scheme == "http" and not trusted and not all(_loopback(ip) for ip in addresses):
            raise UnsafeUrl(f"refused {where}: plain http is allowed to loopback only")
        ip = addresses[0]
        host_header = url.host if url.port is None else f"{url.host}:{url.port}"
        extensions: dict[str, Any] = {}
        if url.scheme == "https" and str(ip) != url.host:
            extensions["sni_hostname"] = url.host  # certificate checked against the name, not the address
        return Pinned(url.copy_with(host=str(ip)), host_header, extensions)


def _loopback(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
