"""The download URL policy and filename sanitising, decided without a network (names resolve through a
table, as DNS would answer)."""

from __future__ import annotations

import httpx
import pytest

from workers.media_sync.models import object_key, safe_filename
from workers.media_sync.safety import UnsafeUrl, UrlPolicy

DNS = {
    "media.example.com": ["93.184.216.34"],
    "cdn.example.com": ["93.184.216.34", "10.0.0.8"],  # one public, one private answer
    "rebind.example.com": ["169.254.169.254"],
    "v6.example.com": ["::ffff:169.254.169.254"],
    "localhost": ["127.0.0.1"],
    "media-provider": ["172.18.0.5"],
}


async def resolve(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("name does not resolve")
    return DNS[host]


@pytest.mark.parametrize(
    ("url", "allow_loopback", "refused"),
    [
        ("https://media.example.com/v/1", False, None),
        ("http://media.example.com/v/1", False, "plain http"),
        ("https://cdn.example.com/v/1", False, "private address"),
        ("https://rebind.example.com/x", False, "link-local"),
        ("https://v6.example.com/x", False, "link-local"),
        ("http://169.254.169.254/latest/meta-data/", True, "link-local"),
        ("https://[fd00:ec2::254]/latest", True, "private address"),
        ("https://100.64.1.1/x", False, "private address"),
        ("https://localhost:8443/x", False, "loopback address"),
        ("http://localhost:8765/x", True, None),
        ("http://127.0.0.1:8765/x", True, None),
        ("https://user:pw@media.example.com/x", False, "credentials"),
        ("ftp://media.example.com/x", False, "only https"),
        ("https://nowhere.invalid/x", False, "does not resolve"),
        ("http://media-provider:8765/x", True, "private address"),
    ],
)
async def test_each_hop_is_judged_by_the_address_it_resolves_to(
    url: str, allow_loopback: bool, refused: str | None
) -> None:
    policy = UrlPolicy(allow_loopback=allow_loopback, resolver=resolve)
    if refused is None:
        pinned = await policy.pin(httpx.URL(url))
        # the connection goes to the checked address; the name travels in Host
        assert pinned.url.host in {a for answers in DNS.values() for a in answers} | {"127.0.0.1"}
        assert pinned.host_header.split(":")[0] == httpx.URL(url).host
    else:
        with pytest.raises(UnsafeUrl, match=refused):
            await policy.pin(httpx.URL(url))


async def test_https_keeps_the_name_for_tls_and_trusted_hosts_may_be_private() -> None:
    pinned = await UrlPolicy(resolver=resolve).pin(httpx.URL("https://media.example.com/v/1?sig=x"))
    assert str(pinned.url) == "https://93.184.216.34/v/1?sig=x"
    assert pinned.extensions == {"sni_hostname": "media.example.com"}
    local = UrlPolicy(resolver=resolve, trusted_hosts=frozenset({"media-provider"}))
    assert (await local.pin(httpx.URL("http://media-provider:8765/x"))).url.host == "172.18.0.5"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..", "file"),
        ("clip\x00\n.mp4", "clip.mp4"),
        ("Été à Nice (4K)!.mov", "Ete_a_Nice_4K.mov"),
        ("C:\\Users\\cam\\GOPR0001.MP4", "GOPR0001.MP4"),
        (".hidden", "hidden"),
        ("a" * 300 + ".mp4", "a" * 196 + ".mp4"),  # 200 characters, extension kept
    ],
)
def test_filenames_are_sanitised_before_they_become_keys(name: str, safe: str) -> None:
    assert safe_filename(name) == safe
    assert object_key("videos/", "m1", name) == f"videos/m1/{safe}"
