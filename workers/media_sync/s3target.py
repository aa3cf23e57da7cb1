"""The S3 side of a transfer: single PUTs, multipart uploads with a CRC32C per part, the digest tag, and
the checks that make a download idempotent (head) and resumable (list_parts)."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from awscrt import checksums
from botocore.exceptions import ClientError

from shared.errors import S3_NO_SUCH_KEY, error_code

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger("fleet.media_sync")

READ_BACK_CHUNK = 8 * 1024 * 1024
GONE = S3_NO_SUCH_KEY | {"NoSuchUpload"}


class BufferBody(io.RawIOBase):
    """A part buffer as a seekable file, without copying it: aiohttp streams a file in chunks (raw bytes
    this large it sends in one piece, and warns), and botocore seeks it back to retry a part."""

    def __init__(self, data: bytearray) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)

    def close(self) -> None:
        self._view.release()
        super().close()


def crc32c_b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(checksums.crc32c(data).to_bytes(4, "big")).decode()


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    crc32c: str | None

    def completed(self) -> dict[str, Any]:
        part: dict[str, Any] = {"PartNumber": self.number, "ETag": self.etag}
        if self.crc32c:
            part["ChecksumCRC32C"] = self.crc32c
        return part


class S3Target:
    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    async def head(self, key: str) -> dict[str, Any] | None:
        try:
            resp = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in GONE:
                return None
            raise
        return {"size": resp.get("ContentLength", 0), "metadata": resp.get("Metadata", {})}

    async def put(self, key: str, body: bytearray, metadata: dict[str, str], content_type: str | None) -> None:
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        await self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=cast(IO[bytes], BufferBody(body)),
            Metadata=metadata,
            ChecksumCRC32C=crc32c_b64(body),  # S3 verifies it; botocore sends ours instead of computing one
            **extra,
        )

    async def create(self, key: str, metadata: dict[str, str], content_type: str | None) -> str:
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        resp = await self._s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=metadata, ChecksumAlgorithm="CRC32C", **extra
        )
        return resp["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytearray, crc: str) -> Part:
        resp = await self._s3.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=cast(IO[bytes], BufferBody(body)),
            ChecksumCRC32C=crc,
        )
        return Part(number, resp["ETag"], len(body), crc)

    async def parts(self, key: str, upload_id: str) -> dict[int, Part] | None:
        """The parts an open upload holds, or None when the upload is gone (completed or aborted)."""
        found: dict[int, Part] = {}
        try:
            async for page in self._s3.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            ):
                for p in page.get("Parts", []):
                    number = int(p["PartNumber"])
                    found[number] = Part(number, p["ETag"], int(p["Size"]), p.get("ChecksumCRC32C"))
        except ClientError as exc:
            if error_code(exc) in GONE:
                return None
            raise
        return found

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        await self._s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [p.completed() for p in sorted(parts, key=lambda p: p.number)]},  # type: ignore[misc]
        )

    async def abort(self, key: str, upload_id: str) -> None:
        try:
            await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) not in GONE:
                raise
        log.info("multipart upload aborted", extra={"key": key})

    async def tag(self, key: str, sha256: str) -> None:
        """The digest as an object tag: metadata is fixed when a multipart upload starts, before the
        digest is known, and rewriting it would copy the whole object."""
        await self._s3.put_object_tagging(
            Bucket=self.bucket, Key=key, Tagging={"TagSet": [{"Key": "sha256", "Value": sha256}]}
        )

    async def tagged_sha256(self, key: str) -> str | None:
        try:
            resp = await self._s3.get_object_tagging(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in GONE:
                return None
            raise
        return next((t["Value"] for t in resp.get("TagSet", []) if t["Key"] == "sha256"), None)

    async def read_back_sha256(self, key: str) -> tuple[str, int]:
        """SHA-256 and size of the stored object, read in chunks (bounded memory)."""
        digest = hashlib.sha256()
        size = 0
        resp = await self._s3.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            while chunk := await body.read(READ_BACK_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size
