"""Deterministic media bytes: any range of any size, generated on demand, never stored.

A media item's bytes are a sequence of 64 KiB blocks. Block k is a per-item random block rotated by an amount
that depends on k, with k itself written in its first 8 bytes: every block differs from every other, so a
part uploaded at the wrong offset, a range served twice or a dropped byte all change the object's digest.
The provider serves these bytes, and tests and benchmarks compute the digest they expect from them.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator

BLOCK = 64 * 1024


@functools.lru_cache(maxsize=256)
def _base(media_id: str, version: int) -> bytes:
    return random.Random(f"{media_id}:{version}").randbytes(BLOCK)


def block(media_id: str, version: int, k: int) -> bytes:
    base = _base(media_id, version)
    r = (k * 7919) % BLOCK
    rotated = base[r:] + base[:r]
    return k.to_bytes(8, "big") + rotated[8:]


def iter_range(media_id: str, version: int, start: int, end: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The bytes [start, end) in pieces of at most `chunk` bytes (and never across a block boundary)."""
    pos = start
    while pos < end:
        k, offset = divmod(pos, BLOCK)
        take = min(BLOCK - offset, end - pos, chunk)
        data = block(media_id, version, k)
        yield data[offset : offset + take]
        pos += take


def read(media_id: str, version: int, start: int, end: int) -> bytes:
    return b"".join(iter_range(media_id, version, start, end))


def sha256_of(media_id: str, version: int, size: int) -> str:
    digest = hashlib.sha256()
    for piece in iter_range(media_id, version, 0, size, chunk=BLOCK):
        digest.update(piece)
    return digest.hexdigest()


def etag_of(media_id: str, version: int, size: int) -> str:
    return '"' + hashlib.sha1(f"{media_id}:{version}:{size}".encode()).hexdigest() + '"'
