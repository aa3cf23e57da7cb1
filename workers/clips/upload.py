"""Stream ffmpeg's output into one S3 object with bounded memory.

Bytes are buffered up to one part. An output that ends below the part size is one PutObject; a larger
one becomes a multipart upload whose parts go up while ffmpeg is still writing (a full buffer waits for
its part to be stored, which back-pressures ffmpeg through its stdout pipe). Nothing is visible under the
key until `complete()`; `abort()` (on any failure) removes the parts, so a failed render never leaves a
partial clip behind."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class StreamingUpload:
    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int,
        content_type: str = "video/mp4",
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.part_size = part_size
        self.content_type = content_type
        self.metadata = metadata or {}
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.upload_id: str | None = None
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []

    @property
    def parts(self) -> int:
        return len(self._parts)

    async def write(self, chunk: bytes) -> None:
        self._buffer.extend(chunk)
        self.size += len(chunk)
        self.sha256.update(chunk)
        while len(self._buffer) >= self.part_size:
            part = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            await self._upload_part(part)

    async def complete(self) -> int:
        """Store the object; returns its size in bytes."""
        if self.upload_id is None:
            await self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=bytes(self._buffer),
                ContentType=self.content_type,
                Metadata=self.metadata,
            )
        else:
            if self._buffer:
                await self._upload_part(bytes(self._buffer))
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
            )
        self._buffer.clear()
        return self.size

    async def abort(self) -> None:
        self._buffer.clear()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)

    async def _upload_part(self, body: bytes) -> None:
        if self.upload_id is None:
            created = await self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type, Metadata=self.metadata
            )
            self.upload_id = created["UploadId"]
        number = len(self._parts) + 1
        resp = await self.s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
